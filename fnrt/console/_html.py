"""Server-rendered HTML for the console: the page works without JavaScript.

Each live section is a function returning the inner HTML of its container; the page
script swaps a container's content when a server-sent event brings a newer rendering,
so there is one rendering of every table, here.
"""

from __future__ import annotations

import datetime
import json
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from .._recent import OUTCOMES, InvocationEntry

BASE = "/console"
JSON_SHOWN = 2000  # characters of a destination/failure record shown in a table cell


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _dash(value: Any) -> str:
    return "&ndash;" if value is None else _e(value)


def _ms(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:,.1f}"


def _time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%S")


def _json(value: Any, limit: int = JSON_SHOWN) -> str:
    text = json.dumps(value, indent=1, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters)"
    return f"<pre>{_e(text)}</pre>"


def _table(caption: str, headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def host(data: dict[str, Any]) -> str:
    h = data["host"]
    items = [
        ("Host", h["hostname"]),
        ("Process", h["pid"]),
        ("Python", h["python"]),
        ("Default sandbox", h["sandbox"]),
        ("Region / account", f"{h['region']} / {h['account_id']}"),
        ("State directory", h["state_dir"] or "none yet (opened on first use)"),
        ("Console since", _time(h["console_started"]) + " UTC"),
    ]
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def functions(data: dict[str, Any]) -> str:
    rows = []
    for f in data["functions"]:
        link = f'<a href="{BASE}/?{urlencode({"function": f["name"]})}#recent">{_e(f["name"])}</a>'
        rows.append(
            [
                link,
                _e(f["handler"]),
                _e(f["sandbox_kind"]),
                f"{f['timeout']:g} s",
                f"{f['memory_mb']} MB",
                _dash(f["reserved_concurrency"]),
                _e(f["provisioned_concurrency"]),
                _e(f["warm"]),
                _e(f["busy"]),
                _e(f["cold_starts"]),
                _e(f["invocations"]),
                _e(f["errors"]),
                f'<span data-metric="throttles" data-function="{_e(f["name"])}">{f["throttles"]}</span>',
                _e(f["timeouts"]),
                _ms(f["duration_p50_ms"]),
                _ms(f["duration_p99_ms"]),
            ]
        )
    headers = [
        "Function",
        "Handler",
        "Sandbox",
        "Timeout",
        "Memory",
        "Reserved",
        "Provisioned",
        "Warm",
        "Busy",
        "Cold starts",
        "Invocations",
        "Errors",
        "Throttles",
        "Timeouts",
        "p50 ms",
        "p99 ms",
    ]
    table = _table("Functions: configuration, sandboxes and totals", headers, rows, "No functions deployed.")
    boxes = [
        [
            _e(f["name"]),
            _e(sb["id"]),
            _dash(sb["pid"]),
            _e(sb["state"]),
            f"{sb['age_s']:,.1f}",
            "&ndash;" if sb["idle_s"] is None else f"{sb['idle_s']:,.1f}",
            _e(sb["invocations"]),
        ]
        for f in data["functions"]
        for sb in f["sandboxes"]
    ]
    sandboxes = _table(
        "Sandboxes: busy and warm",
        ["Function", "Sandbox", "Process", "State", "Age s", "Idle for s", "Invocations"],
        boxes,
        "No sandboxes are running.",
    )
    return table + sandboxes


def concurrency(data: dict[str, Any]) -> str:
    c = data["concurrency"]
    summary = _table(
        "Account concurrency",
        ["Limit", "In flight", "Reserved in all", "Unreserved pool", "Unreserved available", "Throttles"],
        [
            [
                _e(c["limit"]),
                _e(c["in_flight"]),
                _e(c["reserved_total"]),
                _e(c["unreserved_pool"]),
                _e(c["unreserved_available"]),
                f'<span data-metric="throttles-total">{c["throttles"]}</span>',
            ]
        ],
        "",
    )
    reasons = _table(
        "Throttles per reason",
        ["Reason", "Throttles"],
        [[_e(r), _e(n)] for r, n in c["throttles_by_reason"].items()],
        "",
    )
    pools = [
        [
            _e(f["name"]),
            f"{f['in_flight']} / {f['reserved_concurrency']}",
            _e(f["peak_concurrency"]),
            _e(f["throttles_by_reason"].get("ReservedFunctionConcurrentInvocationLimitExceeded", 0)),
        ]
        for f in data["functions"]
        if f["reserved_concurrency"] is not None
    ]
    reserved = _table(
        "Reserved pools",
        ["Function", "In flight / reserved", "Peak", "Throttles"],
        pools,
        "No function has reserved concurrency.",
    )
    return summary + reasons + reserved


def recent(entries: list[InvocationEntry]) -> str:
    rows = []
    for e in entries:
        s = e.summary()
        href = f"{BASE}/invocations/{quote(e.request_id)}"
        rows.append(
            [
                _time(e.at),
                f'<a href="{href}">{_e(e.request_id)}</a>',
                _e(e.function),
                f'<span class="outcome-{e.outcome}">{_e(e.outcome)}</span>',
                "cold" if e.cold_start else "warm",
                _ms(s["duration_ms"]),
                _dash(s["error_type"]),
            ]
        )
    return _table(
        "Recent invocations, newest first",
        ["Time (UTC)", "Request id", "Function", "Outcome", "Start", "Duration ms", "Error type"],
        rows,
        "No invocations match.",
    )


def recent_filter(function_names: list[str], function: str | None, outcome: str | None) -> str:
    fopts = '<option value="">all functions</option>' + "".join(
        f'<option value="{_e(n)}"{" selected" if n == function else ""}>{_e(n)}</option>'
        for n in function_names
    )
    oopts = '<option value="">all outcomes</option>' + "".join(
        f'<option value="{o}"{" selected" if o == outcome else ""}>{o}</option>' for o in OUTCOMES
    )
    return (
        f'<form id="recent-filter" method="get" action="{BASE}/#recent" class="inline">'
        '<label for="filter-function">Function</label> '
        f'<select id="filter-function" name="function">{fopts}</select> '
        '<label for="filter-outcome">Outcome</label> '
        f'<select id="filter-outcome" name="outcome">{oopts}</select> '
        '<button type="submit">Filter</button></form>'
    )


def queues(data: dict[str, Any]) -> str:
    if not data["open"]:
        return '<p class="empty">The async queue is not open yet: it opens with the first Event invoke.</p>'
    rows = []
    for f in data["functions"]:
        c = f["config"]
        dests = ", ".join(
            f"{k}: {v}"
            for k, v in (
                ("success", c["on_success"]),
                ("failure", c["on_failure"]),
                ("DLQ", c["dead_letter"]),
            )
            if v
        )
        rows.append(
            [
                _e(f["function"]),
                f'<span data-metric="queued" data-function="{_e(f["function"])}">{f["queued"]}</span>',
                f'<span data-metric="leased" data-function="{_e(f["function"])}">{f["leased"]}</span>',
                _e(f["done"]),
                _e(f["failed"]),
                _e(f["dropped"]),
                _ms(f["event_age_p50_ms"]),
                _ms(f["event_age_max_ms"]),
                _e(c["max_retry_attempts"]),
                _e(f"{c['max_event_age']:g} s"),
                _e(dests) or "&ndash;",
            ]
        )
    table = _table(
        "Async events per function",
        [
            "Function",
            "Queued",
            "Leased",
            "Done",
            "Failed",
            "Dropped",
            "Event age p50 ms",
            "Event age max ms",
            "Retries",
            "Max event age",
            "Destinations",
        ],
        rows,
        "No functions.",
    )
    sinks = []
    for s in data["sinks"]:
        records = "".join(f"<li>{_json(r)}</li>" for r in s["records"])
        sinks.append(
            f'<section aria-label="Sink {_e(s["sink"])}">'
            f"<h3>Sink {_e(s['sink'])}: {s['count']} record(s)</h3>"
            f"<ol reversed>{records}</ol></section>"
        )
    return table + "".join(sinks)


def _hash_range(shard: dict[str, Any]) -> str:
    r = shard["HashKeyRange"]
    lo, hi = int(r["StartingHashKey"]), int(r["EndingHashKey"])
    return f'<span title="{lo} - {hi}">{lo / 2**128:.3f} - {(hi + 1) / 2**128:.3f}</span>'


def streams(data: dict[str, Any]) -> str:
    if not data["streams"]:
        return '<p class="empty">No stream has a mapping.</p>'
    out = []
    for s in data["streams"]:
        shards = _table(
            f"Shards of {s['name']}",
            ["Shard", "Hash range (share of key space)", "Parent", "Adjacent parent", "State"],
            [
                [
                    _e(sh["ShardId"]),
                    _hash_range(sh),
                    _dash(sh.get("ParentShardId")),
                    _dash(sh.get("AdjacentParentShardId")),
                    "closed" if "EndingSequenceNumber" in sh["SequenceNumberRange"] else "open",
                ]
                for sh in s["shards"]
            ],
            "No shards.",
        )
        mappings = []
        for m in s["mappings"]:
            age = m["iterator_age_ms"]
            checkpoints = "<br>".join(
                f"{_e(k)}: " + (f'<span title="{_e(v)}">&hellip;{_e(v[-8:])}</span>' if v else "none")
                for k, v in sorted(m["checkpoints"].items())
            )
            failures = "".join(f"<li>{_json(r)}</li>" for r in m["failure_records"])
            mappings.append(
                f'<section aria-label="Mapping {_e(m["uuid"])}"><h4>Mapping to {_e(m["function"])} '
                f"<small>{_e(m['uuid'])}</small></h4>"
                + _table(
                    "Mapping state",
                    [
                        "Batch size",
                        "Shards owned",
                        "Checkpoints",
                        "Iterator age p50 ms",
                        "Iterator age max ms",
                        "Batches",
                        "Bisects",
                        "Records skipped",
                        "On-failure records",
                    ],
                    [
                        [
                            _e(m["batch_size"]),
                            "<br>".join(_e(x) for x in m["shards_owned"]) or "&ndash;",
                            checkpoints or "&ndash;",
                            f'<span data-metric="iterator-age" data-mapping="{_e(m["uuid"])}">'
                            f"{_ms(age['p50'])}</span>",
                            _ms(age["max"]),
                            _e(age["count"]),
                            _e(m["bisects"]),
                            _e(m["records_skipped"]),
                            _e(m["failure_count"]),
                        ]
                    ],
                    "",
                )
                + (f"<ol reversed>{failures}</ol>" if failures else "")
                + "</section>"
            )
        out.append(
            f'<section aria-label="Stream {_e(s["name"])}"><h3>Stream {_e(s["name"])}</h3>'
            f"<p><small>{_e(s['arn'])}</small></p>{shards}{''.join(mappings)}</section>"
        )
    return "".join(out)


def invoke_form(function_names: list[str], selected: str | None = None, payload: str = "{}") -> str:
    opts = "".join(
        f'<option value="{_e(n)}"{" selected" if n == selected else ""}>{_e(n)}</option>'
        for n in function_names
    )
    return (
        f'<form id="invoke-form" method="post" action="{BASE}/invoke">'
        f'<p><label for="invoke-function">Function</label> <select id="invoke-function" name="function" '
        f"required>{opts}</select></p>"
        '<p><label for="invoke-payload">Payload (JSON)</label><br>'
        f'<textarea id="invoke-payload" name="payload" rows="4" cols="60" spellcheck="false">{_e(payload)}'
        "</textarea></p>"
        "<fieldset><legend>Invocation type</legend>"
        '<label><input type="radio" name="invocation_type" value="RequestResponse" checked> '
        "RequestResponse</label> "
        '<label><input type="radio" name="invocation_type" value="Event"> Event (queued)</label></fieldset>'
        '<p><button type="submit" id="invoke-submit">Invoke</button></p></form>'
    )


def invoke_result(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    if "error" in result:
        return f'<p class="outcome-error">{_e(result["error"])}</p>'
    parts = [
        f"<p>Request id <code>{_e(result['request_id'])}</code>, status {result['status_code']}"
        + (
            f", function error <strong>{_e(result['function_error'])}</strong>"
            if result["function_error"]
            else ""
        )
        + "</p>"
    ]
    if result.get("result") is not None:
        parts.append(f'<h3>Result</h3><pre id="invoke-output">{_e(result["result"])}</pre>')
    if result.get("log"):
        parts.append(f'<h3>Log tail</h3><pre id="invoke-log">{_e(result["log"])}</pre>')
    return "".join(parts)


def detail(d: dict[str, Any]) -> str:
    r = d["report"]
    items = [
        ("Request id", d["request_id"]),
        ("Function", d["function"]),
        ("Time (UTC)", d["time"]),
        ("Outcome", d["outcome"]),
        ("Start", "cold" if d["cold_start"] else "warm"),
        ("Sandbox", d["sandbox_id"] or "none (init failed)"),
        ("Duration", f"{r['duration_ms']} ms"),
        ("Billed duration", f"{r['billed_duration_ms']} ms"),
        ("Memory size", f"{r['memory_size_mb']} MB"),
        ("Max memory used", f"{r['max_memory_used_mb']} MB"),
        ("Init duration", "none (warm)" if r["init_duration_ms"] is None else f"{r['init_duration_ms']} ms"),
    ]
    if d["error_type"]:
        items.append(("Error", f"{d['error_type']}: {d['error_message']}"))

    def cut(kind: str) -> str:
        size = d[f"{kind}_bytes"]
        return (
            f" (first {len(d[kind].encode())} of {size} bytes)"
            if d[f"{kind}_truncated"]
            else f" ({size} bytes)"
        )

    return (
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"
        f"<h2>Payload{cut('payload')}</h2><pre>{_e(d['payload'])}</pre>"
        f"<h2>Result{cut('result')}</h2><pre>{_e(d['result'])}</pre>"
        f"<h2>Log</h2><pre>{_e(d['log'])}</pre>"
    )


def page(title: str, body: str, *, script: bool = True) -> str:
    scripts = (
        f'<script src="{BASE}/static/vendor/uplot/uPlot.iife.min.js"></script>'
        f'<script src="{BASE}/static/console.js"></script>'
        if script
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        f'<link rel="stylesheet" href="{BASE}/static/vendor/uplot/uPlot.min.css">'
        f'<link rel="stylesheet" href="{BASE}/static/console.css">'
        f"</head><body>{body}{scripts}</body></html>"
    )


def cluster(data: dict[str, Any]) -> str:
    """The cluster: every host on the shared store, who holds which shards, what runs."""
    if not data.get("shared"):
        return (
            '<p class="empty">This host runs alone (no shared store): start hosts with the same '
            "<code>--state</code> (a PostgreSQL URL, or one state directory) to see the cluster here.</p>"
        )
    if "error" in data:
        return f'<p class="error" role="alert">The shared store cannot be read: {_e(data["error"])}</p>'
    me = data.get("host")
    hosts = [
        [
            _e(h["host"]) + (" <strong>(this host)</strong>" if h["host"] == me else ""),
            _e(", ".join(f"{k}={v}" for k, v in sorted((h.get("info") or {}).items()))),
            _e(f"{h['seen_ago']:.1f} s ago"),
        ]
        for h in data.get("hosts", [])
    ]
    leases = [
        [_e(m["stream"]), _e(m["function"]), _e(host), _e(count)]
        for m in data.get("streams", {}).values()
        for host, count in sorted(m["leases_per_host"].items())
    ]
    running = [[_e(name), _e(n)] for name, n in sorted((data.get("in_flight") or {}).items())]
    total = (data.get("queue") or {}).get("total") or {}
    queue = ", ".join(f"{k}: {v}" for k, v in sorted(total.items())) or "empty"
    return (
        _table("Hosts alive", ["Host", "Info", "Last heartbeat"], hosts, "No host has a heartbeat yet.")
        + _table(
            "Shard leases per host", ["Stream", "Function", "Host", "Shards"], leases, "No shard is leased."
        )
        + _table("In flight, cluster-wide", ["Function", "Calls"], running, "Nothing runs.")
        + f"<p>Async queue depth, all hosts: {_e(queue)}</p>"
    )
