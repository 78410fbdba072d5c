//! Edits to the config document: create, patch and delete named entries
//! (pools, nodes, routes, alert rules) and JSON merge patches, applied to a
//! `toml_edit` document so comments and layout of untouched parts stay.
//!
//! Edits only change the document; whether the result is a valid config is
//! decided afterwards by the same parser and validation the file loader
//! uses (`Config::from_toml`), so the API cannot accept what the file would
//! refuse.

use serde_json::{Map, Value as Json};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

/// A collection of named entries in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collection {
    /// `[[pools]]`.
    Pools,
    /// `[[pools.nodes]]` of one pool.
    Nodes {
        /// The pool's name.
        pool: String,
    },
    /// `[[routes]]`.
    Routes,
    /// `[[alerts.rules]]`.
    AlertRules,
}

impl Collection {
    /// What one entry is called, for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Collection::Pools => "pool",
            Collection::Nodes { .. } => "node",
            Collection::Routes => "route",
            Collection::AlertRules => "alert rule",
        }
    }
}

/// Why an edit could not be made (before validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The entry (or its pool) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The edit itself is malformed (wrong JSON shape, name clash).
    #[error("{0}")]
    Bad(String),
}

/// Add an entry built from a JSON object; it must carry a `name` not yet
/// used in the collection.
pub fn create(
    doc: &mut DocumentMut,
    collection: &Collection,
    entry: &Json,
) -> Result<(), EditError> {
    let Json::Object(fields) = entry else {
        return Err(EditError::Bad(format!(
            "a {} must be a JSON object",
            collection.noun()
        )));
    };
    let name = match fields.get("name") {
        Some(Json::String(n)) if !n.trim().is_empty() => n.clone(),
        _ => {
            return Err(EditError::Bad(format!(
                "name: a {} needs a non-empty string name",
                collection.noun()
            )))
        }
    };
    if collection == &Collection::AlertRules {
        materialize_default_rules(doc);
    }
    let list = list_item(doc, collection, true)?;
    if position(list, &name).is_some() {
        return Err(EditError::Bad(format!(
            "name: a {} named \"{name}\" already exists",
            collection.noun()
        )));
    }
    match list {
        Item::ArrayOfTables(tables) => tables.push(table_from(fields)?),
        Item::Value(Value::Array(array)) => {
            let mut value = Value::InlineTable(inline_from(fields)?);
            // One entry per line when the list is written that way.
            let indent = array
                .iter()
                .last()
                .and_then(|v| v.decor().prefix())
                .and_then(|p| p.as_str())
                .and_then(|p| p.rfind('\n').map(|i| p[i..].to_string()));
            if let Some(indent) = indent {
                value.decor_mut().set_prefix(indent);
            }
            array.push_formatted(value);
        }
        _ => {
            return Err(EditError::Bad(format!(
                "{} is not a list",
                path_of(collection)
            )))
        }
    }
    Ok(())
}

/// Change fields of the entry named `name` with a JSON merge patch
/// (RFC 7396): objects merge, `null` removes a field (back to its default),
/// anything else replaces it. Untouched fields keep their formatting.
pub fn patch(
    doc: &mut DocumentMut,
    collection: &Collection,
    name: &str,
    changes: &Json,
) -> Result<(), EditError> {
    let Json::Object(changes) = changes else {
        return Err(EditError::Bad("a patch must be a JSON object".into()));
    };
    if collection == &Collection::AlertRules {
        materialize_default_rules(doc);
    }
    let list = list_item(doc, collection, false)?;
    let index = position(list, name).ok_or_else(|| not_found(collection, name))?;
    let entry = entry_mut(list, index).ok_or_else(|| not_found(collection, name))?;
    merge(entry, changes, "")
}

/// Remove the entry named `name`.
pub fn delete(doc: &mut DocumentMut, collection: &Collection, name: &str) -> Result<(), EditError> {
    if collection == &Collection::AlertRules {
        materialize_default_rules(doc);
    }
    let list = list_item(doc, collection, false)?;
    let index = position(list, name).ok_or_else(|| not_found(collection, name))?;
    match list {
        Item::ArrayOfTables(tables) => {
            tables.remove(index);
        }
        Item::Value(Value::Array(array)) => {
            array.remove(index);
        }
        _ => return Err(not_found(collection, name)),
    }
    Ok(())
}

/// Apply a JSON merge patch to the whole document (top-level sections such
/// as `listener` or `telemetry`; lists are replaced whole).
pub fn merge_document(doc: &mut DocumentMut, changes: &Json) -> Result<(), EditError> {
    let Json::Object(changes) = changes else {
        return Err(EditError::Bad("a patch must be a JSON object".into()));
    };
    merge(doc.as_table_mut(), changes, "")
}

fn not_found(collection: &Collection, name: &str) -> EditError {
    match collection {
        Collection::Nodes { pool } => {
            EditError::NotFound(format!("no node \"{name}\" in pool \"{pool}\""))
        }
        c => EditError::NotFound(format!("no {} named \"{name}\"", c.noun())),
    }
}

fn path_of(collection: &Collection) -> String {
    match collection {
        Collection::Pools => "pools".into(),
        Collection::Nodes { pool } => format!("pools[{pool}].nodes"),
        Collection::Routes => "routes".into(),
        Collection::AlertRules => "alerts.rules".into(),
    }
}

/// The list item of a collection; with `create`, an absent list is added
/// (as `[[...]]` tables, or an inline array inside an inline table).
fn list_item<'a>(
    doc: &'a mut DocumentMut,
    collection: &Collection,
    create: bool,
) -> Result<&'a mut Item, EditError> {
    // An inline parent (`{ ... }`) can only hold an inline list.
    let (parent, key, inline): (&mut dyn TableLike, &str, bool) = match collection {
        Collection::Pools => (doc.as_table_mut(), "pools", false),
        Collection::Routes => (doc.as_table_mut(), "routes", false),
        Collection::AlertRules => {
            let root = doc.as_table_mut();
            if !root.contains_key("alerts") {
                if !create {
                    return Err(EditError::NotFound("no alert rules are configured".into()));
                }
                let mut alerts = Table::new();
                alerts.set_implicit(true);
                root.insert("alerts", Item::Table(alerts));
            }
            let alerts = root
                .get_mut("alerts")
                .ok_or_else(|| EditError::Bad("alerts is not a table".into()))?;
            let inline = alerts.is_inline_table();
            let alerts = alerts
                .as_table_like_mut()
                .ok_or_else(|| EditError::Bad("alerts is not a table".into()))?;
            (alerts, "rules", inline)
        }
        Collection::Nodes { pool } => {
            let pools = doc
                .as_table_mut()
                .get_mut("pools")
                .ok_or_else(|| EditError::NotFound(format!("no pool named \"{pool}\"")))?;
            let index = position(pools, pool)
                .ok_or_else(|| EditError::NotFound(format!("no pool named \"{pool}\"")))?;
            let inline = !pools.is_array_of_tables();
            let table = entry_mut(pools, index)
                .ok_or_else(|| EditError::NotFound(format!("no pool named \"{pool}\"")))?;
            if table.contains_key("discovery") {
                return Err(EditError::Bad(format!(
                    "nodes: pool \"{pool}\" takes its nodes from [pools.discovery]; its nodes cannot be \
                     added, changed, drained or removed here: change them at the source (scale or \
                     annotate the pods, edit the DNS records) or set the pool's discovery defaults"
                )));
            }
            (table, "nodes", inline)
        }
    };
    if !parent.contains_key(key) {
        if !create {
            return Err(EditError::NotFound(format!(
                "{} is empty",
                path_of(collection)
            )));
        }
        let empty = if inline {
            Item::Value(Value::Array(Array::new()))
        } else {
            Item::ArrayOfTables(ArrayOfTables::new())
        };
        parent.insert(key, empty);
    }
    let item = parent
        .get_mut(key)
        .ok_or_else(|| EditError::Bad(format!("{} is not a list", path_of(collection))))?;
    if item.is_array_of_tables() || item.as_array().is_some() {
        Ok(item)
    } else {
        Err(EditError::Bad(format!(
            "{} is not a list",
            path_of(collection)
        )))
    }
}

fn position(list: &mut Item, name: &str) -> Option<usize> {
    match list {
        Item::ArrayOfTables(tables) => tables
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name)),
        Item::Value(Value::Array(array)) => array.iter().position(|v| {
            v.as_inline_table()
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
                == Some(name)
        }),
        _ => None,
    }
}

fn entry_mut(list: &mut Item, index: usize) -> Option<&mut dyn TableLike> {
    match list {
        Item::ArrayOfTables(tables) => tables.get_mut(index).map(|t| t as &mut dyn TableLike),
        Item::Value(Value::Array(array)) => array
            .get_mut(index)
            .and_then(Value::as_inline_table_mut)
            .map(|t| t as &mut dyn TableLike),
        _ => None,
    }
}

/// Merge `changes` into `target` field by field.
fn merge(
    target: &mut dyn TableLike,
    changes: &Map<String, Json>,
    at: &str,
) -> Result<(), EditError> {
    for (key, change) in changes {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match change {
            Json::Null => {
                target.remove(key);
            }
            Json::Object(fields) => match target.get_mut(key) {
                Some(item) if item.is_table_like() => {
                    let Some(table) = item.as_table_like_mut() else {
                        continue;
                    };
                    merge(table, fields, &path)?;
                }
                _ => {
                    // A new section: written inline so it sits with its
                    // entry wherever that is in the file.
                    let value =
                        Value::InlineTable(inline_from(fields).map_err(|e| at_path(&path, e))?);
                    set(target, key, value);
                }
            },
            other => {
                let value = to_value(other).map_err(|e| at_path(&path, e))?;
                set(target, key, value);
            }
        }
    }
    Ok(())
}

fn at_path(path: &str, e: EditError) -> EditError {
    match e {
        EditError::Bad(m) => EditError::Bad(format!("{path}: {m}")),
        other => other,
    }
}

/// Set `key` to `value`, keeping the old value's surrounding whitespace and
/// trailing comment when there was one.
fn set(target: &mut dyn TableLike, key: &str, mut value: Value) {
    if let Some(Item::Value(old)) = target.get(key) {
        *value.decor_mut() = old.decor().clone();
    } else {
        value.decor_mut().set_prefix(" ");
    }
    target.insert(key, Item::Value(value));
}

/// A `[[...]]` table from a JSON object: lists of objects become nested
/// `[[...]]` tables (e.g. a pool's nodes), everything else inline values.
fn table_from(fields: &Map<String, Json>) -> Result<Table, EditError> {
    let mut table = Table::new();
    for (key, value) in fields {
        match value {
            Json::Null => {}
            Json::Array(items) if !items.is_empty() && items.iter().all(Json::is_object) => {
                let mut tables = ArrayOfTables::new();
                for item in items {
                    if let Json::Object(f) = item {
                        tables.push(table_from(f).map_err(|e| at_path(key, e))?);
                    }
                }
                table.insert(key, Item::ArrayOfTables(tables));
            }
            other => {
                let value = to_value(other).map_err(|e| at_path(key, e))?;
                table.insert(key, Item::Value(value));
            }
        }
    }
    Ok(table)
}

fn inline_from(fields: &Map<String, Json>) -> Result<InlineTable, EditError> {
    let mut table = InlineTable::new();
    for (key, value) in fields {
        if value.is_null() {
            continue;
        }
        table.insert(key, to_value(value).map_err(|e| at_path(key, e))?);
    }
    table.fmt();
    Ok(table)
}

/// A TOML value from JSON. JSON has no null in TOML and one number type:
/// integers stay integers, others are floats.
fn to_value(json: &Json) -> Result<Value, EditError> {
    Ok(match json {
        Json::Null => {
            return Err(EditError::Bad(
                "null is only allowed to remove a field".into(),
            ))
        }
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if n.is_u64() {
                return Err(EditError::Bad(format!("{n} is too large")));
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            let mut array = Array::new();
            for item in items {
                array.push(to_value(item)?);
            }
            array.fmt();
            Value::Array(array)
        }
        Json::Object(fields) => Value::InlineTable(inline_from(fields)?),
    })
}

/// `alerts.rules` absent means the built-in rules; adding, changing or
/// removing a rule must start from them, so they are written out first.
fn materialize_default_rules(doc: &mut DocumentMut) {
    let present = doc
        .get("alerts")
        .and_then(Item::as_table_like)
        .is_some_and(|a| a.contains_key("rules"));
    if present {
        return;
    }
    let Ok(list) = list_item(doc, &Collection::AlertRules, true) else {
        return;
    };
    for rule in crate::alerts::default_rules() {
        let fields = crate::alerts::rule_to_json(&rule);
        if let (Json::Object(f), Item::ArrayOfTables(tables)) = (&fields, &mut *list) {
            if let Ok(t) = table_from(f) {
                tables.push(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"# Production fleet
[listener]
addr = "127.0.0.1:8080" # data plane

[[pools]]
name = "llama"   # the chat pool
nodes = [
  { name = "a", addr = "10.0.0.1:8000", weight = 2 }, # rack 1
  { name = "b", addr = "10.0.0.2:8000" },
]

[[pools]]
name = "embed"

[[pools.nodes]]
name = "e1" # first
addr = "10.0.1.1:8000"

[[routes]]
name = "chat"
pool = "llama"
policy = "least_outstanding"
[routes.match]
model = "llama-*"
"#;

    fn doc() -> DocumentMut {
        FILE.parse().unwrap()
    }

    fn check(doc: &DocumentMut) -> crate::config::Config {
        crate::config::Config::from_toml(&doc.to_string()).unwrap_or_else(|e| panic!("{e}\n{doc}"))
    }

    #[test]
    fn patch_inline_node_keeps_comments() {
        let mut d = doc();
        let nodes = Collection::Nodes {
            pool: "llama".into(),
        };
        patch(&mut d, &nodes, "a", &json!({"weight": 5})).unwrap();
        patch(&mut d, &nodes, "b", &json!({"draining": true})).unwrap();
        let text = d.to_string();
        assert!(text.contains("weight = 5 }, # rack 1"), "{text}");
        assert!(text.contains("# Production fleet"));
        assert!(text.contains("name = \"llama\"   # the chat pool"));
        let c = check(&d);
        assert_eq!(c.pools[0].nodes[0].weight, 5);
        assert!(c.pools[0].nodes[1].draining);
        patch(&mut d, &nodes, "b", &json!({"draining": null})).unwrap();
        assert!(!check(&d).pools[0].nodes[1].draining);
    }

    #[test]
    fn patch_table_node_and_nested_section() {
        let mut d = doc();
        let nodes = Collection::Nodes {
            pool: "embed".into(),
        };
        patch(
            &mut d,
            &nodes,
            "e1",
            &json!({"weight": 3, "max_concurrent": 8}),
        )
        .unwrap();
        patch(
            &mut d,
            &Collection::Pools,
            "embed",
            &json!({"health": {"interval": "2s", "unhealthy_threshold": 2}, "queue_size": 10}),
        )
        .unwrap();
        let text = d.to_string();
        assert!(text.contains("name = \"e1\" # first"), "{text}");
        let c = check(&d);
        assert_eq!(c.pools[1].nodes[0].weight, 3);
        assert_eq!(c.pools[1].queue_size, 10);
        assert!(c.pools[1].health.is_some());
        // Nested merge into the section just made.
        patch(
            &mut d,
            &Collection::Pools,
            "embed",
            &json!({"health": {"unhealthy_threshold": 4}}),
        )
        .unwrap();
        assert_eq!(
            check(&d).pools[1]
                .health
                .as_ref()
                .unwrap()
                .unhealthy_threshold,
            4
        );
    }

    #[test]
    fn create_and_delete_entries() {
        let mut d = doc();
        create(
            &mut d,
            &Collection::Pools,
            &json!({"name": "qwen", "nodes": [{"name": "q1", "addr": "10.0.2.1:8000"}, {"name": "q2", "addr": "10.0.2.2:8000", "weight": 3}]}),
        )
        .unwrap();
        create(
            &mut d,
            &Collection::Routes,
            &json!({"name": "qwen", "pool": "qwen", "policy": "weighted_round_robin", "match": {"model": "qwen*"}}),
        )
        .unwrap();
        create(
            &mut d,
            &Collection::Nodes {
                pool: "llama".into(),
            },
            &json!({"name": "c", "addr": "10.0.0.3:8000"}),
        )
        .unwrap();
        let c = check(&d);
        assert_eq!(c.pools.len(), 3);
        assert_eq!(c.pools[2].nodes[1].weight, 3);
        assert_eq!(c.pools[0].nodes.len(), 3);
        assert_eq!(c.routes[1].pool, "qwen");
        let pools: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pools, ["llama", "embed", "qwen"]);
        // Names are unique.
        let dup = create(&mut d, &Collection::Pools, &json!({"name": "qwen"}));
        assert!(matches!(dup, Err(EditError::Bad(m)) if m.contains("already exists")));
        delete(&mut d, &Collection::Routes, "qwen").unwrap();
        delete(&mut d, &Collection::Pools, "qwen").unwrap();
        delete(
            &mut d,
            &Collection::Nodes {
                pool: "embed".into(),
            },
            "e1",
        )
        .unwrap();
        let text = d.to_string();
        assert!(!text.contains("qwen"), "{text}");
        assert!(!text.contains("e1"), "{text}");
        assert!(matches!(
            delete(&mut d, &Collection::Pools, "nope"),
            Err(EditError::NotFound(_))
        ));
    }

    #[test]
    fn adding_a_rule_keeps_the_default_rules() {
        let mut d = doc();
        create(
            &mut d,
            &Collection::AlertRules,
            &json!({"name": "Slow", "kind": "latency_p99", "threshold": 2.0, "for": "10s"}),
        )
        .unwrap();
        let c = check(&d);
        let rules = c.alerts.rules.unwrap();
        assert_eq!(rules.len(), crate::alerts::default_rules().len() + 1);
        assert_eq!(rules.last().unwrap().name, "Slow");
        patch(
            &mut d,
            &Collection::AlertRules,
            "Slow",
            &json!({"threshold": 3.5}),
        )
        .unwrap();
        delete(&mut d, &Collection::AlertRules, "NodeDown").unwrap();
        let rules = check(&d).alerts.rules.unwrap();
        assert!(rules.iter().all(|r| r.name != "NodeDown"));
        assert_eq!(
            rules.iter().find(|r| r.name == "Slow").unwrap().threshold,
            3.5
        );
    }

    #[test]
    fn built_in_rules_can_be_changed_and_removed() {
        let mut d = doc();
        patch(
            &mut d,
            &Collection::AlertRules,
            "NodeDown",
            &json!({"for": "3s"}),
        )
        .unwrap();
        let rules = check(&d).alerts.rules.unwrap();
        assert_eq!(rules.len(), crate::alerts::default_rules().len());
        let down = rules.iter().find(|r| r.name == "NodeDown").unwrap();
        assert_eq!(down.for_, std::time::Duration::from_secs(3));
        let mut d = doc();
        delete(&mut d, &Collection::AlertRules, "PoolShedding").unwrap();
        let rules = check(&d).alerts.rules.unwrap();
        assert_eq!(rules.len(), crate::alerts::default_rules().len() - 1);
    }

    #[test]
    fn merge_document_sections_and_bad_values() {
        let mut d = doc();
        merge_document(
            &mut d,
            &json!({"telemetry": {"enabled": false}, "listener": {"max_connections": 5}}),
        )
        .unwrap();
        let c = check(&d);
        assert_eq!(c.listener.max_connections, 5);
        assert!(d
            .to_string()
            .contains("addr = \"127.0.0.1:8080\" # data plane"));
        let bad = patch(
            &mut d,
            &Collection::Pools,
            "llama",
            &json!({"x": [1, null]}),
        );
        assert!(matches!(bad, Err(EditError::Bad(m)) if m.starts_with("x:")));
        let nf = patch(
            &mut d,
            &Collection::Nodes {
                pool: "nope".into(),
            },
            "a",
            &json!({}),
        );
        assert!(matches!(nf, Err(EditError::NotFound(m)) if m.contains("no pool named \"nope\"")));
    }
}
