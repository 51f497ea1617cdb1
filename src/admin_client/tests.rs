use super::*;

fn copying() -> Migration {
    Migration {
        id: 7,
        kind: "move".into(),
        partition: 3,
        source: "a".into(),
        target: "b".into(),
        state: "copying".into(),
        rows_total: 27_000,
        rows_copied: 12_345,
        bytes_copied: 3_100_000,
        rate: 1_200_000.0,
        eta_secs: Some(3.2),
        started: "2024-05-01 12:00:00.000000+00".into(),
        ..Migration::default()
    }
}

#[test]
fn bar_fills_in_proportion() {
    assert_eq!(bar(0.0, 10), "[----------]");
    assert_eq!(bar(0.45, 20), "[#########-----------]");
    assert_eq!(bar(1.0, 10), "[##########]");
    assert_eq!(bar(1.7, 4), "[####]");
    assert_eq!(bar(-1.0, 4), "[----]");
    assert_eq!(bar(f64::NAN, 4).len(), 6);
}

#[test]
fn progress_line_while_copying() {
    assert_eq!(
        progress_line(&copying(), 20),
        "migration 7 move p3 a→b  copying  [#########-----------]  45%  \
         12,345/27,000 rows  3.1 MB  1.2 MB/s  ETA 4s"
    );
}

#[test]
fn progress_line_shows_the_step_outside_the_copy() {
    let mut m = copying();
    m.state = "catching_up".into();
    m.rows_copied = 27_000;
    assert_eq!(
        progress_line(&m, 20),
        "migration 7 move p3 a→b  catching_up  27,000 rows  3.1 MB copied"
    );
    m.state = "planned".into();
    m.rows_copied = 0;
    assert_eq!(progress_line(&m, 20), "migration 7 move p3 a→b  planned");
    // No rows known yet: an empty bar, not a division by zero.
    m.state = "copying".into();
    m.rows_total = 0;
    m.rate = 0.0;
    m.eta_secs = None;
    assert!(progress_line(&m, 4).contains("[----]   0%  0/0 rows  3.1 MB"));
}

#[test]
fn plain_lines() {
    assert_eq!(
        plain_line(&copying()),
        "migration 7: copying 12345/27000 rows, 3.1 MB, 1.2 MB/s, ETA 4s"
    );
    let mut m = copying();
    m.state = "cutting_over".into();
    assert_eq!(plain_line(&m), "migration 7: cutting_over");
}

#[test]
fn final_lines() {
    let mut m = copying();
    m.state = "done".into();
    m.rows_copied = 27_000;
    m.pause_ms = Some(85.2);
    m.finished = Some("2024-05-01 12:00:02.300000+00".into());
    assert_eq!(
        final_line(&m),
        "migration 7 done in 2.3s (27000 rows, 3.1 MB; writes held 85 ms)"
    );
    m.pause_ms = None;
    m.finished = None;
    assert_eq!(final_line(&m), "migration 7 done (27000 rows, 3.1 MB)");

    m.state = "aborted".into();
    m.reason = Some("target node b unreachable".into());
    assert_eq!(
        final_line(&m),
        "migration 7 aborted: target node b unreachable"
    );

    let split = Migration {
        id: 8,
        kind: "split".into(),
        state: "done".into(),
        reason: Some("partition 3 split at 0 into 9 and 10".into()),
        started: "2024-05-01 12:00:00+00".into(),
        finished: Some("2024-05-01 12:00:00.04+00".into()),
        ..Migration::default()
    };
    assert_eq!(
        final_line(&split),
        "migration 8 done in 0.0s: partition 3 split at 0 into 9 and 10"
    );
}

#[test]
fn describe_split_and_move() {
    let mut m = copying();
    assert_eq!(describe(&m), "move p3 a→b");
    m.kind = "split".into();
    m.target = "a".into();
    assert_eq!(describe(&m), "split p3 on a");
}

#[test]
fn byte_units() {
    assert_eq!(fmt_bytes(0.0), "0 B");
    assert_eq!(fmt_bytes(999.0), "999 B");
    assert_eq!(fmt_bytes(1_000.0), "1.0 kB");
    assert_eq!(fmt_bytes(1_234.0), "1.2 kB");
    assert_eq!(fmt_bytes(3_100_000.0), "3.1 MB");
    assert_eq!(fmt_bytes(999_960.0), "1.0 MB");
    assert_eq!(fmt_bytes(2_500_000_000.0), "2.5 GB");
    assert_eq!(fmt_bytes(4.2e12), "4.2 TB");
    assert_eq!(fmt_bytes(-5.0), "0 B");
}

#[test]
fn counts_and_durations() {
    assert_eq!(fmt_count(0), "0");
    assert_eq!(fmt_count(999), "999");
    assert_eq!(fmt_count(1_000), "1,000");
    assert_eq!(fmt_count(12_345), "12,345");
    assert_eq!(fmt_count(1_234_567), "1,234,567");
    assert_eq!(fmt_count(-1_234), "-1,234");
    assert_eq!(fmt_secs(3.2), "4s");
    assert_eq!(fmt_secs(125.0), "2m05s");
    assert_eq!(fmt_secs(3_780.0), "1h03m");
    assert_eq!(fmt_duration(2.34), "2.3s");
    assert_eq!(fmt_duration(65.0), "1m05s");
    assert_eq!(fmt_ms(85.2), "85 ms");
    assert_eq!(fmt_ms(0.42), "0.4 ms");
}

#[test]
fn timestamps() {
    assert_eq!(parse_timestamp("1970-01-01 00:00:00+00"), Some(0.0));
    assert_eq!(
        parse_timestamp("2024-05-01 12:34:56.5+00"),
        Some(1_714_566_896.5)
    );
    assert_eq!(
        parse_timestamp("2024-05-01 14:34:56.5+02"),
        parse_timestamp("2024-05-01T12:34:56.5Z")
    );
    assert_eq!(
        parse_timestamp("2024-05-01 07:04:56-05:30"),
        parse_timestamp("2024-05-01 12:34:56+00")
    );
    assert_eq!(
        parse_timestamp("2000-02-29 00:00:00+00"),
        Some(951_782_400.0)
    );
    assert_eq!(parse_timestamp("infinity"), None);
    assert_eq!(parse_timestamp("2024-13-01 00:00:00+00"), None);
    assert_eq!(parse_timestamp(""), None);
}

#[test]
fn table_lists_and_truncates() {
    let mut m = copying();
    m.pause_ms = Some(12.0);
    m.reason = Some("x".repeat(100));
    let other = Migration {
        id: 12,
        kind: "split".into(),
        partition: 10,
        source: "a".into(),
        target: "a".into(),
        state: "done".into(),
        ..Migration::default()
    };
    let table = render_table(&[other, m]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("ID  KIND   PARTITION  SOURCE→TARGET  STATE"));
    assert!(lines[1].starts_with("12  split         10  a→a            done"));
    assert!(lines[2].contains("12,345/27,000"));
    assert!(lines[2].contains("3.1 MB"));
    let reason = lines[2].rsplit("  ").next().unwrap();
    assert_eq!(reason.chars().count(), REASON_WIDTH);
    assert!(reason.ends_with('…'));
    assert_eq!(render_table(&[]), "no migrations\n");
}

#[test]
fn request_bodies() {
    let split = Request::Split {
        partition: 3,
        at: None,
        to: Some("b".into()),
    };
    assert_eq!(
        split.body(),
        serde_json::json!({"kind": "split", "partition": 3, "to": "b"})
    );
    let split = Request::Split {
        partition: 3,
        at: Some(-42),
        to: None,
    };
    assert_eq!(
        split.body(),
        serde_json::json!({"kind": "split", "partition": 3, "at": -42})
    );
    assert_eq!(
        Request::Merge {
            partitions: vec![3, 4]
        }
        .body(),
        serde_json::json!({"kind": "merge", "partitions": [3, 4]})
    );
    assert_eq!(
        Request::Drain { node: "a".into() }.body(),
        serde_json::json!({"kind": "drain", "node": "a"})
    );
    assert_eq!(
        Request::Move {
            partition: 1,
            to: "b".into()
        }
        .body(),
        serde_json::json!({"kind": "move", "partition": 1, "to": "b"})
    );
}

#[test]
fn accepted_ids_from_reply() {
    let reply = serde_json::json!({"id": 4, "ids": [4, 5]});
    assert_eq!(accepted_ids(&reply), Some(vec![4, 5]));
    assert_eq!(accepted_ids(&serde_json::json!({"id": 9})), Some(vec![9]));
    assert_eq!(accepted_ids(&serde_json::json!({})), None);
}

#[test]
fn admin_urls() {
    let a = Admin::parse("http://127.0.0.1:9187").unwrap();
    assert_eq!(a.authority, "127.0.0.1:9187");
    assert_eq!(a.prefix, "");
    let a = Admin::parse("HTTP://proxy/admin/").unwrap();
    assert_eq!(a.authority, "proxy:80");
    assert_eq!(a.prefix, "/admin");
    assert_eq!(
        Admin::parse("localhost:9187").unwrap().authority,
        "localhost:9187"
    );
    assert_eq!(
        Admin::parse("http://[::1]:9187").unwrap().authority,
        "[::1]:9187"
    );
    assert_eq!(Admin::parse("http://[::1]").unwrap().authority, "[::1]:80");
    assert!(Admin::parse("https://127.0.0.1:9187").is_err());
    assert!(Admin::parse("http://").is_err());
}

#[test]
fn request_text() {
    let r = build_request("POST", "h:1", "/api/migrations", Some("{}"));
    assert!(r.starts_with("POST /api/migrations HTTP/1.1\r\nHost: h:1\r\n"));
    assert!(r.contains("\r\nConnection: close\r\n"));
    assert!(r.contains("\r\nContent-Type: application/json\r\n"));
    assert!(r.ends_with("\r\nContent-Length: 2\r\n\r\n{}"));
    let r = build_request("GET", "h:1", "/api/migrations/3", None);
    assert!(r.ends_with("\r\nContent-Length: 0\r\n\r\n"));
    assert!(!r.contains("Content-Type"));
}

#[test]
fn response_with_content_length() {
    let raw = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n\
                content-length: 19\r\n\r\n{\"id\":4,\"ids\":[4]}\n";
    let r = parse_response(raw, false).unwrap().unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(r.body, b"{\"id\":4,\"ids\":[4]}\n");
    // Short of the length: wait for more.
    assert_eq!(parse_response(&raw[..raw.len() - 3], false), Ok(None));
    // Headers not complete yet.
    assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nconte", false), Ok(None));
}

#[test]
fn chunked_response() {
    let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                5\r\n{\"err\r\n14;ext=1\r\nor\":\"no migration 9\"\r\n1\r\n}\r\n0\r\n\r\n";
    let r = parse_response(raw, false).unwrap().unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"{\"error\":\"no migration 9\"}");
    // Every prefix short of the final empty line is incomplete.
    for cut in 0..raw.len() {
        assert_eq!(parse_response(&raw[..cut], false), Ok(None), "cut at {cut}");
    }
    // Trailers after the last chunk.
    let trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
                     2\r\n[]\r\n0\r\nx-a: b\r\n\r\n";
    let r = parse_response(trailers, false).unwrap().unwrap();
    assert_eq!(r.body, b"[]");
    assert!(decode_chunked(b"zz\r\n").is_err());
    assert!(decode_chunked(b"2\r\nabcd\r\n").is_err());
}

#[test]
fn response_until_eof_and_interim() {
    let raw = b"HTTP/1.0 200 OK\r\n\r\n[]";
    assert_eq!(parse_response(raw, false), Ok(None));
    assert_eq!(parse_response(raw, true).unwrap().unwrap().body, b"[]");
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";
    let r = parse_response(raw, false).unwrap().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
    assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
}

#[test]
fn error_messages_from_bodies() {
    let r = Response {
        status: 409,
        body: br#"{"error":"partition 3 is already migrating"}"#.to_vec(),
    };
    let e = r.error().unwrap();
    assert_eq!(e.to_string(), "partition 3 is already migrating");
    assert!(!e.transient());
    let r = Response {
        status: 503,
        body: b"upstream down".to_vec(),
    };
    let e = r.error().unwrap();
    assert_eq!(
        e.to_string(),
        "the admin API answered HTTP 503: upstream down"
    );
    assert!(e.transient());
    assert!(Response {
        status: 202,
        body: vec![]
    }
    .error()
    .is_none());
}

#[test]
fn migration_json_from_the_api() {
    let v = serde_json::json!({
        "id": 7, "kind": "move", "partition": 3, "source": "a", "target": "b",
        "lo": -5, "hi": 5, "state": "done", "rows_total": 10, "rows_copied": 10,
        "bytes_copied": 2048, "rate": 100.5, "eta_secs": null, "pause_ms": 3.5,
        "reason": null, "owner": "p1", "started": "2024-05-01 12:00:00+00",
        "finished": "2024-05-01 12:00:01.5+00"
    });
    let m: Migration = serde_json::from_value(v).unwrap();
    assert!(m.finished());
    assert_eq!(elapsed_secs(&m), Some(1.5));
    assert_eq!(
        final_line(&m),
        "migration 7 done in 1.5s (10 rows, 2.0 kB; writes held 3.5 ms)"
    );
}
