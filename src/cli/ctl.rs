//! `infergate ctl`: the config API for scripts and people at a terminal.
//! Tables by default, the API's JSON with `--json`; exit status 0 on
//! success, 1 when the gateway refused or failed, 2 when it could not be
//! asked. Every change reads the running version first and sends it in
//! If-Match, so a change made meanwhile by someone else is refused (409),
//! never overwritten.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::http::{Http, Reply};

/// `infergate ctl` arguments.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin listener of the gateway; several, comma-separated, to run
    /// the same command on each replica in turn (stopping at the first
    /// that refuses or cannot be asked).
    #[arg(
        long,
        env = "INFERGATE_ADMIN",
        default_value = "http://127.0.0.1:9090",
        value_delimiter = ','
    )]
    admin: Vec<String>,
    /// Bearer token for changes (better from the environment than the
    /// command line, where other users can see it).
    #[arg(long, env = "INFERGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Nodes of every pool: weight, state, load, traffic share.
    Nodes,
    /// Stop sending new requests to a node (those in flight finish).
    Drain {
        /// `NODE`, or `POOL/NODE` when the name is in several pools.
        node: String,
    },
    /// Put a drained node back into service.
    Enable {
        /// `NODE` or `POOL/NODE`.
        node: String,
    },
    /// Set a node's weight (1 to 10000).
    Weight {
        /// `NODE` or `POOL/NODE`.
        node: String,
        /// The new weight.
        weight: u32,
    },
    /// Replace the running config with FILE, after showing the diff.
    Apply {
        /// The new config file (TOML).
        file: PathBuf,
        /// Apply without asking.
        #[arg(long, short)]
        yes: bool,
        /// Only validate and show the diff.
        #[arg(long)]
        dry_run: bool,
    },
    /// Configs in force recently, newest first (for rollback).
    History,
    /// Put an earlier config back in force, after showing the diff.
    Rollback {
        /// Version to go back to (default: the one before the current).
        version: Option<String>,
        /// Roll back without asking.
        #[arg(long, short)]
        yes: bool,
        /// Only show the diff.
        #[arg(long)]
        dry_run: bool,
    },
    /// Alerts firing now, and the rules.
    Alerts,
    /// The running config file (secrets redacted).
    Config,
    /// Recent config changes: who, when, what.
    Audit {
        /// Entries to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn unreachable(message: String) -> Failure {
    Failure { code: 2, message }
}

fn refused(message: String) -> Failure {
    Failure { code: 1, message }
}

/// With several gateways: the one being asked, so JSON output says whose
/// it is (one compact document per line).
static CURRENT_ADMIN: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Run `ctl`.
pub async fn run(args: CtlArgs) -> ExitCode {
    let several = args.admin.len() > 1;
    for admin in &args.admin {
        if several {
            *CURRENT_ADMIN.lock().unwrap_or_else(|p| p.into_inner()) = Some(admin.clone());
            if !args.json {
                println!("== {admin} ==");
            }
        }
        if let Err(f) = run_inner(&args, admin).await {
            if several {
                eprintln!("error: {admin}: {}", f.message);
            } else {
                eprintln!("error: {}", f.message);
            }
            return ExitCode::from(f.code);
        }
    }
    ExitCode::SUCCESS
}

async fn run_inner(args: &CtlArgs, admin: &str) -> Result<(), Failure> {
    let actor = format!(
        "ctl:{}",
        std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into())
    );
    let mut api = Http::new(admin, Duration::from_secs(30))
        .map_err(unreachable)?
        .with_header("x-infergate-actor", &actor)
        .map_err(unreachable)?;
    if let Some(token) = &args.token {
        api = api
            .with_header("authorization", &format!("Bearer {token}"))
            .map_err(|_| unreachable("the token is not a valid header value".into()))?;
    }
    match &args.command {
        CtlCommand::Nodes => {
            let snapshot = api.get_json("/api/v1/nodes").await.map_err(unreachable)?;
            if args.json {
                print_json(&snapshot);
            } else {
                print!("{}", nodes_table(&snapshot));
            }
            Ok(())
        }
        CtlCommand::Drain { node } => {
            let (pool, node) = resolve(&api, node).await?;
            let path = format!("/api/v1/config/pools/{pool}/nodes/{node}/drain");
            let applied = change(&api, Method::POST, &path, Bytes::new()).await?;
            report(args.json, &applied, &format!("drained {pool}/{node}"));
            Ok(())
        }
        CtlCommand::Enable { node } => {
            let (pool, node) = resolve(&api, node).await?;
            let path = format!("/api/v1/config/pools/{pool}/nodes/{node}/enable");
            let applied = change(&api, Method::POST, &path, Bytes::new()).await?;
            report(args.json, &applied, &format!("enabled {pool}/{node}"));
            Ok(())
        }
        CtlCommand::Weight { node, weight } => {
            let (pool, node) = resolve(&api, node).await?;
            let path = format!("/api/v1/config/pools/{pool}/nodes/{node}/weight");
            let body = Bytes::from(json!({ "weight": weight }).to_string());
            let applied = change(&api, Method::PUT, &path, body).await?;
            report(
                args.json,
                &applied,
                &format!("weight of {pool}/{node} set to {weight}"),
            );
            Ok(())
        }
        CtlCommand::Apply { file, yes, dry_run } => {
            apply(&api, args.json, file, *yes, *dry_run).await
        }
        CtlCommand::History => {
            let history = api
                .get_json("/api/v1/config/history")
                .await
                .map_err(unreachable)?;
            if args.json {
                print_json(&history);
            } else {
                print!("{}", history_table(&history));
            }
            Ok(())
        }
        CtlCommand::Rollback {
            version,
            yes,
            dry_run,
        } => rollback(&api, args.json, version.as_deref(), *yes, *dry_run).await,
        CtlCommand::Alerts => {
            let alerts = api.get_json("/api/v1/alerts").await.map_err(unreachable)?;
            if args.json {
                print_json(&alerts);
            } else {
                print!("{}", alerts_table(&alerts));
            }
            Ok(())
        }
        CtlCommand::Config => {
            let config = api.get_json("/api/v1/config").await.map_err(unreachable)?;
            if args.json {
                print_json(&config);
            } else {
                println!(
                    "# version {} · {}",
                    config["version"].as_str().unwrap_or("?"),
                    config["path"].as_str().unwrap_or("(not persisted)")
                );
                print!("{}", config["text"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        CtlCommand::Audit { limit } => {
            let audit = api
                .get_json(&format!("/api/v1/config/audit?limit={limit}"))
                .await
                .map_err(unreachable)?;
            if args.json {
                print_json(&audit);
            } else {
                print!("{}", audit_table(&audit));
            }
            Ok(())
        }
    }
}

fn print_json(value: &Value) {
    match &*CURRENT_ADMIN.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(admin) => println!("{}", json!({"admin": admin, "result": value})),
        None => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
    }
}

/// The secrets a change sets or changes, by name: the redacted diff
/// cannot show them.
fn print_secrets_changed(applied: &Value) {
    if let Some(names) = applied["secrets_changed"]
        .as_array()
        .filter(|a| !a.is_empty())
    {
        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
        println!("secret changed (value not shown): {}", names.join(", "));
    }
}

fn report(json: bool, applied: &Value, what: &str) {
    if json {
        print_json(applied);
    } else if applied["changed"] == json!(false) {
        println!("{what}: no change (it already was)");
    } else {
        print_secrets_changed(applied);
        if let Some(later) = applied["restart_required"]
            .as_array()
            .filter(|a| !a.is_empty())
        {
            let names: Vec<&str> = later.iter().filter_map(Value::as_str).collect();
            println!(
                "note: {} take(s) effect at the next restart; the rest is in force now",
                names.join(", ")
            );
        }
        println!(
            "{what} · config version {}{}",
            applied["version"].as_str().unwrap_or("?"),
            if applied["persisted"] == json!(true) {
                " (saved to the config file)"
            } else {
                " (not persisted: the gateway has no config file)"
            }
        );
    }
}

/// `NODE` or `POOL/NODE` to (pool, node), from the running config.
async fn resolve(api: &Http, wanted: &str) -> Result<(String, String), Failure> {
    let config = api.get_json("/api/v1/config").await.map_err(unreachable)?;
    let (pool_filter, node) = match wanted.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, wanted),
    };
    let mut found = Vec::new();
    for pool in config["config"]["pools"].as_array().into_iter().flatten() {
        let pool_name = pool["name"].as_str().unwrap_or("");
        if pool_filter.is_some_and(|p| p != pool_name) {
            continue;
        }
        for n in pool["nodes"].as_array().into_iter().flatten() {
            if n["name"].as_str() == Some(node) {
                found.push(pool_name.to_string());
            }
        }
    }
    match found.len() {
        1 => Ok((found.remove(0), node.to_string())),
        0 => Err(refused(format!("no node named {wanted}"))),
        _ => Err(refused(format!(
            "node {node} is in pools {}: say which, as POOL/{node}",
            found.join(", ")
        ))),
    }
}

/// Send a change based on the version in force now.
async fn change(api: &Http, method: Method, path: &str, body: Bytes) -> Result<Value, Failure> {
    let version = current_version(api).await?;
    let reply = api
        .send(
            method,
            path,
            &[("if-match", format!("\"{version}\""))],
            body,
        )
        .await
        .map_err(unreachable)?;
    applied_or_failure(&reply)
}

async fn current_version(api: &Http) -> Result<String, Failure> {
    let config = api.get_json("/api/v1/config").await.map_err(unreachable)?;
    config["version"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| unreachable("the gateway did not say its config version".into()))
}

fn applied_or_failure(reply: &Reply) -> Result<Value, Failure> {
    match reply.status {
        StatusCode::OK => reply.json().map_err(unreachable),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(refused(format!(
            "{}: {} (set INFERGATE_ADMIN_TOKEN)",
            reply.status,
            reply.error_message()
        ))),
        status => Err(refused(format!("{status}: {}", reply.error_message()))),
    }
}

async fn apply(
    api: &Http,
    json: bool,
    file: &PathBuf,
    yes: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| unreachable(format!("cannot read {}: {e}", file.display())))?;
    let what = format!("applied {}", file.display());
    let change = Outgoing {
        method: Method::PUT,
        path: "/api/v1/config",
        body: Bytes::from(text),
    };
    preview_then_send(api, json, change, &what, yes, dry_run).await
}

async fn rollback(
    api: &Http,
    json: bool,
    version: Option<&str>,
    yes: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    let version = match version {
        Some(v) => v.to_string(),
        None => {
            let history = api
                .get_json("/api/v1/config/history")
                .await
                .map_err(unreachable)?;
            let current = history["current"].as_str().unwrap_or("");
            history["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["version"].as_str())
                .find(|v| *v != current)
                .map(str::to_string)
                .ok_or_else(|| refused("no earlier config to roll back to".into()))?
        }
    };
    let what = format!("rolled back to {version}");
    let change = Outgoing {
        method: Method::POST,
        path: "/api/v1/config/rollback",
        body: Bytes::from(json!({ "version": version }).to_string()),
    };
    preview_then_send(api, json, change, &what, yes, dry_run).await
}

/// A change request to preview and then send.
struct Outgoing {
    method: Method,
    path: &'static str,
    body: Bytes,
}

/// Validate and diff a change with a dry run, ask (or require --yes), then
/// send it based on the version previewed, so anything changed since is a
/// 409 instead of being overwritten.
async fn preview_then_send(
    api: &Http,
    json: bool,
    change: Outgoing,
    what: &str,
    yes: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    let version = current_version(api).await?;
    let if_match = [("if-match", format!("\"{version}\""))];
    let preview = api
        .send(
            change.method.clone(),
            &format!("{}?dry_run=true", change.path),
            &if_match,
            change.body.clone(),
        )
        .await
        .map_err(unreachable)?;
    let preview = applied_or_failure(&preview)?;
    if preview["changed"] == json!(false) {
        if json {
            print_json(&preview);
        } else {
            println!("no change from the running config (version {version})");
        }
        return Ok(());
    }
    if !json || dry_run {
        print!(
            "{}",
            ending_in_newline(preview["diff"].as_str().unwrap_or(""))
        );
        if !json {
            print_secrets_changed(&preview);
        }
    }
    if dry_run {
        if json {
            print_json(&preview);
        }
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(refused(
                "not applied: re-run with --yes to apply without a prompt".into(),
            ));
        }
        print!("Apply this to the running gateway? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(refused("not applied".into()));
        }
    }
    let reply = api
        .send(change.method, change.path, &if_match, change.body)
        .await
        .map_err(unreachable)?;
    let applied = applied_or_failure(&reply)?;
    report(json, &applied, what);
    Ok(())
}

fn ending_in_newline(diff: &str) -> String {
    if diff.ends_with('\n') || diff.is_empty() {
        diff.to_string()
    } else {
        format!("{diff}\n")
    }
}

/// Rows of cells to aligned text; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
}

fn secs_ms(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |s| format!("{:.0}ms", s * 1000.0))
}

fn nodes_table(snapshot: &Value) -> String {
    let mut rows = vec![[
        "POOL",
        "NODE",
        "ADDR",
        "WEIGHT",
        "STATE",
        "IN FLIGHT",
        "REQ/S",
        "SHARE",
        "EXPECTED",
        "P99",
        "ERR%",
    ]
    .map(String::from)
    .to_vec()];
    for pool in snapshot["pools"].as_array().into_iter().flatten() {
        for n in pool["nodes"].as_array().into_iter().flatten() {
            rows.push(vec![
                pool["name"].as_str().unwrap_or("").into(),
                n["name"].as_str().unwrap_or("").into(),
                n["addr"].as_str().unwrap_or("").into(),
                n["weight"].to_string(),
                n["state"].as_str().unwrap_or("").into(),
                n["in_flight"].to_string(),
                n["rate"].as_f64().map_or("-".into(), |r| format!("{r:.1}")),
                pct(&n["share"]),
                pct(&n["expected_share"]),
                secs_ms(&n["p99"]),
                pct(&n["error_rate"]),
            ]);
        }
    }
    table(&rows)
}

fn alerts_table(alerts: &Value) -> String {
    let mut out = String::new();
    let active = alerts["active"].as_array().cloned().unwrap_or_default();
    if active.is_empty() {
        out.push_str("No alerts firing.\n");
    } else {
        let mut rows = vec![["SEVERITY", "RULE", "TARGET", "VALUE", "SUMMARY"]
            .map(String::from)
            .to_vec()];
        for a in &active {
            rows.push(vec![
                a["severity"].as_str().unwrap_or("").into(),
                a["rule"].as_str().unwrap_or("").into(),
                a["target"].as_str().unwrap_or("").into(),
                a["value"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.3}")),
                a["summary"].as_str().unwrap_or("").into(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    let mut rows = vec![["RULE", "KIND", "POOL", "THRESHOLD", "FOR", "SEVERITY"]
        .map(String::from)
        .to_vec()];
    for r in alerts["rules"].as_array().into_iter().flatten() {
        rows.push(vec![
            r["name"].as_str().unwrap_or("").into(),
            r["kind"].as_str().unwrap_or("").into(),
            r["pool"].as_str().unwrap_or("all").into(),
            r["threshold"].to_string(),
            r["for_s"].as_f64().map_or("-".into(), |s| format!("{s}s")),
            r["severity"].as_str().unwrap_or("").into(),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn history_table(history: &Value) -> String {
    let current = history["current"].as_str().unwrap_or("");
    let mut rows = vec![["", "VERSION", "SINCE (UTC)", "BY", "WHAT"]
        .map(String::from)
        .to_vec()];
    for v in history["versions"].as_array().into_iter().flatten() {
        let version = v["version"].as_str().unwrap_or("");
        rows.push(vec![
            if version == current { "*" } else { "" }.into(),
            version.into(),
            utc(v["at_unix_ms"].as_u64().unwrap_or(0)),
            v["actor"].as_str().unwrap_or("").into(),
            v["action"].as_str().unwrap_or("").into(),
        ]);
    }
    table(&rows)
}

fn audit_table(audit: &Value) -> String {
    let mut rows = vec![["ID", "WHEN (UTC)", "ACTOR", "OUTCOME", "ACTION", "DETAIL"]
        .map(String::from)
        .to_vec()];
    for e in audit["entries"].as_array().into_iter().flatten() {
        // One line: the first problem, without the "invalid config:" lead.
        let detail: String = e["detail"]
            .as_str()
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && *l != "invalid config:")
            .unwrap_or("")
            .chars()
            .take(100)
            .collect();
        rows.push(vec![
            e["id"].to_string(),
            utc(e["at_unix_ms"].as_u64().unwrap_or(0)),
            e["actor"].as_str().unwrap_or("").into(),
            e["outcome"].as_str().unwrap_or("").into(),
            e["action"].as_str().unwrap_or("").into(),
            detail,
        ]);
    }
    table(&rows)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC from Unix milliseconds.
fn utc(ms: u64) -> String {
    crate::alerts::rfc3339(ms)
        .replace('T', " ")
        .chars()
        .take(19)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_651_200_000), "2026-11-26 00:00:00");
        assert_eq!(utc(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03");
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["A".into(), "LONG HEADER".into(), "X".into()],
            vec!["wide cell".into(), "b".into(), "c".into()],
        ]);
        assert_eq!(t, "A          LONG HEADER  X\nwide cell  b            c\n");
    }
}
