//! `shardcast plan`: what the planner of a running proxy would do now, and
//! why — per-node utilization now and expected, then each decision with
//! its reason and cost.

use std::io::Write;

use serde_json::Value;

use super::{fail, get_or_print, EXIT_OK};

pub fn plan(admin: &str, json: bool) -> i32 {
    let body = match get_or_print(admin, "/api/plan", json) {
        Ok(b) => b,
        Err(code) => return code,
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            let _ = write!(std::io::stdout(), "{}", render(&v));
            EXIT_OK
        }
        Err(e) => fail(&format!("the admin API's plan is not JSON: {e}")),
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// The plan as a person reads it.
pub fn render(v: &Value) -> String {
    let mut out = format!(
        "policy {} · threshold {:.2} · horizon {}\n\n{:<12} {:>10} {:>6} {:>9} {:>9} {:>10} {:>6}\n",
        v["policy"].as_str().unwrap_or("?"),
        num(v, "threshold").unwrap_or(0.0),
        crate::planner::human_secs(num(v, "horizon_secs").unwrap_or(0.0)),
        "node",
        "capacity",
        "now",
        "expected",
        "after",
        "crosses",
        "parts",
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let crosses = match num(n, "crosses_in") {
            Some(s) if s <= 0.0 => "now".to_string(),
            Some(s) => format!("in {}", crate::planner::human_secs(s)),
            None => "-".to_string(),
        };
        let cap = num(n, "capacity").unwrap_or(0.0);
        let util = |k: &str| {
            if cap > 0.0 {
                format!("{:.2}", num(n, k).unwrap_or(0.0))
            } else {
                "?".to_string()
            }
        };
        out.push_str(&format!(
            "{:<12} {:>10} {:>6} {:>9} {:>9} {:>10} {:>6}\n",
            n["name"].as_str().unwrap_or("?"),
            if cap > 0.0 {
                format!("{cap:.0}/s")
            } else {
                "?".into()
            },
            util("utilization"),
            util("expected"),
            util("after"),
            crosses,
            n["partitions"].as_u64().unwrap_or(0),
        ));
    }
    let decisions = v["decisions"].as_array().cloned().unwrap_or_default();
    if decisions.is_empty() {
        out.push_str("\nnothing to do now\n");
    } else {
        out.push_str("\nwould do:\n");
        for d in &decisions {
            out.push_str(&format!(
                "  {} — {}\n",
                d["action"]["kind"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("")
            ));
        }
    }
    for note in v["notes"].as_array().into_iter().flatten() {
        out.push_str(&format!("  note: {}\n", note.as_str().unwrap_or("")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_as_a_table_and_reasons() {
        let v = serde_json::json!({
            "policy": "predictive", "threshold": 0.8, "horizon_secs": 900,
            "nodes": [
                {"name": "n0", "capacity": 1000.0, "partitions": 4, "utilization": 0.71,
                 "expected": 0.93, "after": 0.78, "crosses_in": 360.0},
                {"name": "n1", "capacity": 0.0, "partitions": 4, "utilization": 0.0,
                 "expected": 0.0, "after": 0.0, "crosses_in": null}
            ],
            "decisions": [{"action": {"kind": "move", "partition": 3, "from": 0, "to": 1},
                           "cost": {}, "reason": "n0 is expected at 0.93 …"}],
            "notes": ["n1: no capacity_qps"]
        });
        let text = render(&v);
        assert!(
            text.contains("n0") && text.contains("0.93") && text.contains("in 6m"),
            "{text}"
        );
        assert!(text.contains("move — n0 is expected at 0.93"), "{text}");
        assert!(text.contains("note: n1: no capacity_qps"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("n1") && l.contains('?')),
            "{text}"
        );
    }
}
