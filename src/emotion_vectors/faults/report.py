"""The fault battery's table and the markdown of its details (``results/faults/faults.md``)."""

from __future__ import annotations

from typing import Any

from .common import _short


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| fault | injected | survived | data lost | notes |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['fault']} | {r['injected']} | {r['survived']} | {r['lost']} | {r['notes'].replace('|', '/')} |")
    return "\n".join(out)


def details_markdown(details: dict[str, Any]) -> str:
    parts = []
    for kind in ("activations", "stories"):
        info = details.get(f"kill_{kind}")
        if not info:
            continue
        parts += [f"\n### SIGKILL points: {kind} (uninterrupted run {info['reference_seconds']} s after load, "
                  f"{info['checkpoints']} checkpoints)\n", "| kill | planned stage | delay (s) | stage hit | resumed from | result |", "|---|---|---|---|---|---|"]
        for r in info["kills"]:
            parts.append(f"| {r['kill']} | {r['stage_planned']} | {r.get('delay_s', '')} | {r['stage_hit']} | "
                         f"{r.get('resumed', '')} | {r.get('result', '')} |")
    for key, title in (("corrupt_partials", "Corrupted activation partials"), ("corrupt_checkpoints", "Corrupted story checkpoints")):
        if key in details:
            parts += [f"\n### {title}\n", "| case | corruption | survived | result | log |", "|---|---|---|---|---|"]
            for r in details[key]:
                parts.append(f"| {r['case']} | {r['what']} | {'yes' if r['ok'] else 'NO'} | {r['result']} | {_short(r['log'], 160).replace('|', '/')} |")
    if "configs" in details:
        parts += ["\n### Malformed configs\n", "| # | config | run | rc | error (first line) | names key | job started | ok |", "|---|---|---|---|---|---|---|---|"]
        for r in details["configs"]:
            parts.append(f"| {r['n']} | {r['what']} | {r['mode']} | {r['rc']} | {_short(r['error'], 160).replace('|', '/')} | "
                         f"{'-' if r['accept'] else ('yes' if r['names_key'] else 'NO')} | {'yes' if r['jobs_started'] else 'no'} | {'yes' if r['ok'] else 'NO'} |")
    server = details.get("server") or {}
    if server:
        parts.append("\n### Model server\n")
        if "busy" in server:
            b = server["busy"]
            parts.append(f"- busy with a full listen queue: {b['queued_connections']} connections queued (EAGAIN seen: "
                         f"{b['eagain']}); {b['jobs_met_full_queue']}/{b['jobs']} jobs met the full queue, which stayed full "
                         f"{b['queue_full_for_s']} s; server starts {b['servers_started']}; shards bit-identical "
                         f"{b['jobs_served_identical']}; {b['seconds']} s")
        for key, title in (("symlinks", "planted symlink"), ("stopped", "SIGSTOP"), ("killed", "SIGKILL"),
                           ("trickle", "trickling client"), ("squat", "GPU lock directory")):
            for r in server.get(key, []):
                rest = {k: v for k, v in r.items() if k not in ("case", "ok")}
                parts.append(f"- {title}, {r['case']}: {'ok' if r['ok'] else 'NOT OK'}; "
                             + "; ".join(f"{k}: {_short(v, 200)}" for k, v in rest.items() if v not in ("", None, [])))
    if "full_disk" in details:
        fd = details["full_disk"]
        parts += ["\n### Full disk\n", f"- method: {fd['method']}", f"- activation shard error: `{_short(fd['activation_error'], 400)}`",
                  f"- story shard error: `{_short(fd['story_error'], 400)}`",
                  f"- finished shards on the full filesystem intact: {fd['finished_shards_intact']} {fd['finished_notes'] or ''}",
                  f"- after freeing space: activations {fd['activation_after_freeing']} (resumed {fd['activation_resumed_rows']} rows); stories {fd['story_after_freeing']}"]
    return "\n".join(parts)
