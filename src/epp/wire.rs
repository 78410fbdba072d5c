//! The message shapes of the Endpoint Picker Protocol on ext_proc: reading
//! the proxy's headers, subset and served endpoint out of a
//! `ProcessingRequest`, and building the destination header, its dynamic
//! metadata and pass-through bodies of a `ProcessingResponse`.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, Metadata as EnvoyMetadata,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HttpHeaders,
    StreamedBodyResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use http::{HeaderMap, HeaderName, Method};

/// Header (and metadata key) naming the picked endpoint and its fallbacks
/// (`ip:port,ip:port,...`).
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Dynamic metadata namespace of the answer.
pub const DESTINATION_NAMESPACE: &str = "envoy.lb";
/// Filter metadata namespace of the proxy's endpoint subset.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key of the subset list in [`SUBSET_NAMESPACE`].
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// Key under [`DESTINATION_NAMESPACE`] of the endpoint that served.
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";
/// Most bytes of a served endpoint the picker reads.
const MAX_SERVED_LEN: usize = 256;

/// The value of an Envoy header (`raw_value` from Envoy 1.27 on, else
/// `value`).
pub fn header_text(h: &HeaderValue) -> std::borrow::Cow<'_, str> {
    if h.raw_value.is_empty() {
        std::borrow::Cow::Borrowed(h.value.as_str())
    } else {
        String::from_utf8_lossy(&h.raw_value)
    }
}

/// Method, path and the regular headers of an ext_proc header message.
pub fn read_headers(headers: &HttpHeaders) -> (Method, String, HeaderMap) {
    let mut method = Method::GET;
    let mut path = String::from("/");
    let mut map = HeaderMap::new();
    for h in headers.headers.iter().flat_map(|m| &m.headers) {
        let value = header_text(h);
        match h.key.as_str() {
            ":method" => {
                if let Ok(m) = Method::from_bytes(value.as_bytes()) {
                    method = m;
                }
            }
            ":path" => path = value.split('?').next().unwrap_or("/").to_string(),
            key if key.starts_with(':') => {}
            key => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(key.as_bytes()),
                    http::HeaderValue::from_str(&value),
                ) {
                    map.append(name, value);
                }
            }
        }
    }
    (method, path, map)
}

/// The endpoint subset the proxy sent, if any (an empty list is a subset
/// nothing is in).
pub fn subset_of(metadata: &EnvoyMetadata) -> Option<Vec<String>> {
    let hint = metadata.filter_metadata.get(SUBSET_NAMESPACE)?;
    let list = hint.fields.get(SUBSET_KEY)?;
    Some(match &list.kind {
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some(Kind::StringValue(s)) => s.split(',').map(|s| s.trim().to_string()).collect(),
        _ => Vec::new(),
    })
}

pub fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        // OVERWRITE_IF_EXISTS_OR_ADD: a client cannot pick for itself.
        append_action: 2,
        ..HeaderValueOption::default()
    }
}

/// Set the destination header and re-route (the destination changes the
/// cluster's choice).
pub fn destination(addr: &str) -> CommonResponse {
    CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers: vec![header(DESTINATION_HEADER, addr)],
            remove_headers: Vec::new(),
        }),
        clear_route_cache: true,
        ..CommonResponse::default()
    }
}

/// `{"envoy.lb": {"x-gateway-destination-endpoint": addr}}`.
pub fn destination_metadata(addr: &str) -> Struct {
    let inner = Struct {
        fields: [(
            DESTINATION_HEADER.to_string(),
            Value {
                kind: Some(Kind::StringValue(addr.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    };
    Struct {
        fields: [(
            DESTINATION_NAMESPACE.to_string(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}

pub fn streamed_body(body: Vec<u8>, end: bool) -> BodyResponse {
    BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body,
                        end_of_stream: end,
                        ..StreamedBodyResponse::default()
                    },
                )),
            }),
            ..CommonResponse::default()
        }),
    }
}

/// The endpoint the proxy says served the request
/// (`metadata_context.filter_metadata["envoy.lb"]["x-gateway-destination-endpoint-served"]`).
pub fn served_of(metadata: &EnvoyMetadata) -> Option<&str> {
    let lb = metadata.filter_metadata.get(DESTINATION_NAMESPACE)?;
    match &lb.fields.get(SERVED_KEY)?.kind {
        Some(Kind::StringValue(s)) if s.len() <= MAX_SERVED_LEN => Some(s.trim()),
        _ => None,
    }
}
