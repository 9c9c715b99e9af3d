"""Summaries of ``stow_bench.py`` runs: medians, ratios, targets, Markdown, plots."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._measurement import Measurement

MIB = 1024 * 1024
LABELS = {
    "ours": "twisted-stow, chunked",
    "ours-w1": "twisted-stow --workers 1, chunked",
    "ours-length": "twisted-stow, Content-Length",
    "ours-limited": "twisted-stow --max-requests",
    "orthanc": "Orthanc, chunked",
    "sink": "loopback discard sink",
    "disk": "disk write + fsync per file",
}
# The issue's targets (point 6).
LARGE_VS_ORTHANC = 4.0
LARGE_VS_DISK = 0.6
CT_VS_ORTHANC = 3.0
PEAK_RSS_MIB = 120
REFUSAL_SECONDS = 0.050
# In the workers scenario "ours" is named for its configuration.
WORKERS_LABELS = {**LABELS, "ours": "twisted-stow, default workers, chunked"}
# The issue's targets (issue 12, point 7), checked on the workers scenario.
SIXTEEN_VS_ORTHANC = 1.5
SIXTEEN_GOAL = 2.0
CT_ONE_VS_ORTHANC = 3.0
LARGE_ONE_VS_ORTHANC = 6.0
LARGE_FOUR_VS_DISK = 0.8
PROCESS_RSS_MIB = 150
OURS_CONFIGURATIONS = {"ours-w1": "--workers 1", "ours": "default workers"}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON: environment and summary indented, one line per run,
    times rounded to 0.1 ms, so the file of a full run stays small."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, list):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    runs = ",\n  ".join(json.dumps(rounded(run)) for run in data["runs"])
    head = {k: v for k, v in data.items() if k != "runs"}
    text = json.dumps(rounded(head), indent=1)
    path.write_text(f'{text[:-2]},\n "runs": [\n  {runs}\n ]\n}}\n')


def one_line(m: Measurement) -> str:
    text = (
        f"{m.target:<12} {m.study:<6} c={m.clients:<3} run {m.run}: {m.seconds:7.2f} s"
        f" {m.mb_per_second:7.1f} MB/s {m.instances_per_second:7.1f} inst/s"
    )
    if m.peak_rss is not None:
        text += f" peak RSS {m.peak_rss / MIB:.0f} MiB"
    if m.kernel_peak_rss is not None:
        text += f" (VmHWM {m.kernel_peak_rss / MIB:.0f})"
    if m.processes and m.processes > 1 and m.peak_process_rss is not None:
        text += f", largest of {m.processes} processes {m.peak_process_rss / MIB:.0f} MiB"
    if m.cpu_seconds is not None:
        text += f" CPU {m.cpu_seconds:.1f} s"
    if m.refusal_latencies:
        text += (
            f" {len(m.refusal_latencies)} x 503 (p95"
            f" {_percentile(m.refusal_latencies, 95) * 1000:.1f} ms)"
        )
    text += f" load {m.load_average[0]:.2f}"
    if m.problems:
        text += " ERROR: " + "; ".join(m.problems)
    return text


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of one value is that value)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(results: Sequence[Measurement], max_requests: int) -> dict[str, Any]:
    groups: dict[tuple[str, str, str, int], list[Measurement]] = {}
    for m in results:
        groups.setdefault((m.scenario, m.study, m.target, m.clients), []).append(m)
    rows = []
    for (scenario, study, target, clients), runs in groups.items():
        latencies = [s for m in runs for s in m.latencies]
        refusals = [s for m in runs for s in m.refusal_latencies]
        probes = [s for m in runs for s in m.probe_refusal_latencies]
        answers = sum(sum(m.answers.values()) for m in runs)
        refused = sum(m.answers.get("503", 0) for m in runs)
        rows.append(
            {
                "scenario": scenario,
                "study": study,
                "target": target,
                "clients": clients,
                "runs": len(runs),
                "mb_per_s": _median([m.mb_per_second for m in runs]),
                "mb_per_s_range": [
                    min(m.mb_per_second for m in runs),
                    max(m.mb_per_second for m in runs),
                ],
                "instances_per_s": _median([m.instances_per_second for m in runs]),
                "instances_per_s_range": [
                    min(m.instances_per_second for m in runs),
                    max(m.instances_per_second for m in runs),
                ],
                "latency_p50_s": _percentile(latencies, 50) if latencies else None,
                "latency_p95_s": _percentile(latencies, 95) if latencies else None,
                "peak_rss_mib": _median([m.peak_rss and m.peak_rss / MIB for m in runs]),
                "peak_rss_max_mib": max(
                    (
                        max(m.peak_rss or 0, m.kernel_peak_rss or 0) / MIB
                        for m in runs
                        if m.peak_rss is not None
                    ),
                    default=None,
                ),
                # The largest single process (main or a worker), sampled or VmHWM.
                "peak_process_rss_max_mib": max(
                    (
                        max(m.peak_process_rss or 0, m.kernel_peak_process_rss or 0) / MIB
                        for m in runs
                        if m.peak_process_rss is not None
                    ),
                    default=None,
                ),
                "processes": max((m.processes or 0 for m in runs), default=0) or None,
                "stored_instances": [m.instances for m in runs],
                "cpu_s": _median([m.cpu_seconds for m in runs]),
                "cpu_s_per_gb": _median(
                    [
                        m.cpu_seconds / (m.body_bytes / 1e9)
                        for m in runs
                        if m.cpu_seconds is not None and m.body_bytes
                    ]
                ),
                "answers": answers,
                "refused_share": refused / answers if answers else None,
                "refusal_p50_ms": _percentile(refusals, 50) * 1000 if refusals else None,
                "refusal_p95_ms": _percentile(refusals, 95) * 1000 if refusals else None,
                "refusal_max_ms": max(refusals) * 1000 if refusals else None,
                "probe_refusals": len(probes),
                "probe_admitted": sum(m.probe_admitted for m in runs),
                "probe_p50_ms": _percentile(probes, 50) * 1000 if probes else None,
                "probe_p95_ms": _percentile(probes, 95) * 1000 if probes else None,
                "probe_max_ms": max(probes) * 1000 if probes else None,
                "errors": sorted({p for m in runs for p in m.problems}),
                "load_average": [
                    min(m.load_average[0] for m in runs),
                    max(m.load_average[0] for m in runs),
                ],
            }
        )
    summary: dict[str, Any] = {"rows": rows, "max_requests": max_requests}
    summary["ratios"] = _ratios(rows)
    summary["targets"] = _targets(rows, summary["ratios"], max_requests)
    summary["targets_issue12"] = _issue12_targets(rows, summary["ratios"], results)
    return summary


def _find(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row[k] == v for k, v in key.items()):
            return row
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, field: str) -> float | None:
    if a is None or b is None or not a[field] or not b[field]:
        return None
    return float(a[field] / b[field])


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["target"] not in ("ours", "ours-w1", "ours-length") or row["scenario"] not in (
            "throughput",
            "concurrency",
            "workers",
        ):
            continue
        key = {"scenario": row["scenario"], "study": row["study"], "clients": row["clients"]}
        orthanc = _find(rows, target="orthanc", **key)
        out.append(
            {
                **key,
                "ours": row["target"],
                "vs_orthanc_mb": _ratio(row, orthanc, "mb_per_s"),
                "vs_orthanc_instances": _ratio(row, orthanc, "instances_per_s"),
                "vs_orthanc_peak_rss": _ratio(row, orthanc, "peak_rss_mib"),
                "vs_sink": _ratio(row, _find(rows, target="sink", **key), "mb_per_s"),
                "vs_disk": _ratio(row, _find(rows, target="disk", **key), "mb_per_s"),
            }
        )
    return out


def _targets(
    rows: list[dict[str, Any]], ratios: list[dict[str, Any]], max_requests: int
) -> list[dict[str, Any]]:
    out = []

    def add(name: str, required: str, measured: float | None, met: bool | None, note: str) -> None:
        out.append(
            {"target": name, "required": required, "measured": measured, "met": met, "note": note}
        )

    # The client is not the bottleneck where it pushes faster into the
    # discard sink than any server takes the same requests.
    margins = []
    for sink in (r for r in rows if r["target"] == "sink" and r["mb_per_s"]):
        servers = [
            r["mb_per_s"]
            for r in rows
            if r["scenario"] == sink["scenario"]
            and r["study"] == sink["study"]
            and r["clients"] == sink["clients"]
            and r["target"] not in ("sink", "disk")
            and r["mb_per_s"]
        ]
        if servers:
            margins.append(sink["mb_per_s"] / max(servers))
    if margins:
        v = min(margins)
        add(
            "client: loopback sink MB/s / fastest server, worst scenario",
            "> 1x",
            v,
            v > 1.0,
            f"over {len(margins)} scenarios",
        )
    for ours in ("ours", "ours-length"):
        framing = "chunked" if ours == "ours" else "Content-Length"
        large = _find(ratios, scenario="throughput", study="large", ours=ours)
        if large:
            v = large["vs_orthanc_mb"]
            met = bool(v and v >= LARGE_VS_ORTHANC)
            add(f"large, {framing}: MB/s vs Orthanc", f">= {LARGE_VS_ORTHANC:g}x", v, met, "")
            v = large["vs_disk"]
            met = bool(v and v >= LARGE_VS_DISK)
            add(f"large, {framing}: MB/s vs disk write", f">= {LARGE_VS_DISK:.0%}", v, met, "")
        ct = _find(ratios, scenario="throughput", study="ct", ours=ours)
        if ct:
            v = ct["vs_orthanc_instances"]
            met = bool(v and v >= CT_VS_ORTHANC)
            add(f"ct, {framing}: instances/s vs Orthanc", f">= {CT_VS_ORTHANC:g}x", v, met, "")
    one = _find(rows, scenario="concurrency", target="ours", clients=1)
    sixteen = _find(rows, scenario="concurrency", target="ours", clients=16)
    if one and sixteen:
        v = _ratio(sixteen, one, "mb_per_s")
        met = bool(v and v >= 1.0 and not sixteen["errors"])
        note = f"{len(sixteen['errors'])} errors"
        add("16 clients: MB/s vs 1 client, no error", ">= 1x", v, met, note)
    huge = [r for r in rows if r["scenario"] == "memory"]
    if huge:
        v = max(r["peak_rss_max_mib"] or 0 for r in huge)
        add(
            "peak RSS during the huge POST (> 4 GiB at full size), MiB",
            f"<= {PEAK_RSS_MIB}",
            v,
            v <= PEAK_RSS_MIB,
            "max of sampled RSS and VmHWM, both framings",
        )
    limited = [r for r in rows if r["scenario"] == "limit" and r["refusal_p95_ms"] is not None]
    if limited:
        admitted = min(r["mb_per_s"] or 0 for r in limited)
        ok = admitted > 0 and not any(r["errors"] for r in limited)
        for key, who in (
            ("probe_p95_ms", "a probe in its own process"),
            ("refusal_p95_ms", "the retrying clients"),
        ):
            values = [r[key] for r in limited if r[key] is not None]
            if not values:
                continue
            v = max(values)
            worst = max(limited, key=lambda r: r[key] or 0)["clients"]
            add(
                f"503 latency p95 (ms) seen by {who}, uploads admitted meanwhile",
                f"< {REFUSAL_SECONDS * 1000:.0f}",
                v,
                v < REFUSAL_SECONDS * 1000 and ok,
                f"--max-requests {max_requests}, worst at {worst} clients;"
                f" admitted >= {admitted:.0f} MB/s",
            )
    return out


def _per_run(
    results: Sequence[Measurement], study: str, clients: int, ours: str, other: str, field: str
) -> list[float]:
    """``ours`` / ``other`` in each workers run apart, by run number."""
    figures: dict[tuple[str, int], float] = {}
    for m in results:
        if m.scenario == "workers" and m.study == study and m.clients == clients:
            figures[(m.target, m.run)] = getattr(m, field)
    return [
        figures[(ours, run)] / figures[(other, run)]
        for target, run in sorted(figures, key=lambda key: key[1])
        if target == ours and figures.get((other, run))
    ]


def _issue12_targets(
    rows: list[dict[str, Any]], ratios: list[dict[str, Any]], results: Sequence[Measurement]
) -> list[dict[str, Any]]:
    """Issue 12's table, from the workers scenario (fresh servers every run).

    The measured figure is the ratio of two medians over the same runs; the
    note gives the ratio within each run too (both targets then shared the
    machine within seconds).  A row whose runs had an error does not meet
    its target whatever the figure.
    """
    out = []

    def add(name: str, required: str, measured: float | None, met: bool, note: str) -> None:
        out.append(
            {"target": name, "required": required, "measured": measured, "met": met, "note": note}
        )

    def runs_note(study: str, clients: int, ours: str, other: str, field: str) -> str:
        each = _per_run(results, study, clients, ours, other, field)
        return "per run: " + ", ".join(f"{v:.2f}" for v in each) if each else ""

    def clean(*keys: dict[str, Any]) -> bool:
        found = [_find(rows, scenario="workers", **key) for key in keys]
        return all(row is not None and not row["errors"] for row in found)

    # The three ours / Orthanc rows, each at both of our configurations:
    # (study, clients, ratio field, per-run field, required, what is measured).
    versus_orthanc = (
        (
            "ct16",
            16,
            "vs_orthanc_instances",
            "instances_per_second",
            SIXTEEN_VS_ORTHANC,
            "16 clients at once, each its own CT series: instances/s",
        ),
        (
            "ct",
            1,
            "vs_orthanc_instances",
            "instances_per_second",
            CT_ONE_VS_ORTHANC,
            "ct, one client: instances/s",
        ),
        (
            "large",
            1,
            "vs_orthanc_mb",
            "mb_per_second",
            LARGE_ONE_VS_ORTHANC,
            "large, one client: MB/s",
        ),
    )
    for study, clients, ratio_field, run_field, required, what in versus_orthanc:
        for ours, configuration in OURS_CONFIGURATIONS.items():
            ratio = _find(ratios, scenario="workers", study=study, clients=clients, ours=ours)
            if not ratio:
                continue
            v = ratio[ratio_field]
            met = bool(v and v >= required) and clean(
                {"study": study, "target": ours, "clients": clients},
                {"study": study, "target": "orthanc", "clients": clients},
            )
            note = runs_note(study, clients, ours, "orthanc", run_field)
            wanted = f">= {required:g}x"
            if study == "ct16":
                goal = "goal met" if v and v >= SIXTEEN_GOAL else "goal not met"
                note = f"{goal}; {note}"
                wanted += f" (goal {SIXTEEN_GOAL:g}x)"
            add(f"{what}, ours ({configuration}) / Orthanc", wanted, v, met, note)
    four = _find(ratios, scenario="workers", study="large", clients=4, ours="ours")
    if four:
        v = four["vs_disk"]
        met = bool(v and v >= LARGE_FOUR_VS_DISK) and clean(
            {"study": "large", "target": "ours", "clients": 4},
            {"study": "large", "target": "disk", "clients": 4},
        )
        add(
            "large, 4 clients: MB/s, ours (default workers) / disk write + fsync, 4 writers",
            f">= {LARGE_FOUR_VS_DISK:g}x",
            v,
            met,
            "the disk limit measured in the same runs; "
            + runs_note("large", 4, "ours", "disk", "mb_per_second"),
        )
    for ours, configuration in OURS_CONFIGURATIONS.items():
        row = _find(rows, scenario="workers", study="ct16", target=ours)
        if row and row["peak_process_rss_max_mib"] is not None:
            v = row["peak_process_rss_max_mib"]
            add(
                f"peak RSS of one process, 16 concurrent CT series, ours ({configuration}), MiB",
                f"< {PROCESS_RSS_MIB}",
                v,
                v < PROCESS_RSS_MIB and not row["errors"],
                f"largest process, max of sampled RSS and VmHWM over the runs;"
                f" the tree of {row['processes']} process(es): {_f(row['peak_rss_max_mib'])} MiB",
            )
    return out


# Markdown.


def _f(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(info: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    lines = [
        "# twisted-stow benchmark results",
        "",
        (
            f"Run {info['started_utc']} UTC, {info['seconds']} s, size `{info['size']}`,"
            f" {info['runs']} run(s) per point (medians; latency percentiles over all runs)."
            f" Server code {info['commit']}; Python {info['python']}, Twisted {info['twisted']};"
            f" Orthanc {info['orthanc']} + DICOMweb {info['orthanc_dicomweb']}"
            f" (listening on {', '.join(info.get('orthanc_listening', ['-']))});"
            f" {info['cpus']} CPUs, {info['memory_gib']} GiB RAM; data under `{info['workdir']}`."
        ),
        (
            f"Load average (1 min) at start {info['load_average_start'][0]:.2f},"
            f" at end {info['load_average_end'][0]:.2f}; per point in the tables."
        ),
        "",
        "## Throughput: one POST per study",
        "",
        (
            "| study | target | MB/s (range) | instances/s | latency p50 / p95 s | peak RSS MiB"
            " | server CPU s/GB | load | check |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["scenario"] == "throughput":
            lines.append(_row(row, row["study"]))
    lines += [
        "",
        "## Ratios",
        "",
        (
            "| scenario | ours | ours/Orthanc MB/s | ours/Orthanc instances/s"
            " | ours/Orthanc peak RSS | ours/loopback sink | ours/disk write |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["ratios"]:
        where = {
            "throughput": r["study"],
            "concurrency": f"{r['clients']} clients",
            "workers": f"{r['study']}, {r['clients']} client(s)",
        }[r["scenario"]]
        labels = WORKERS_LABELS if r["scenario"] == "workers" else LABELS
        lines.append(
            f"| {r['scenario']} {where} | {labels[r['ours']]}"
            f" | {_f(r['vs_orthanc_mb'], '{:.2f}')} | {_f(r['vs_orthanc_instances'], '{:.2f}')}"
            f" | {_f(r['vs_orthanc_peak_rss'], '{:.2f}')} | {_f(r['vs_sink'], '{:.2f}')}"
            f" | {_f(r['vs_disk'], '{:.2f}')} |"
        )
    lines += [
        "",
        "## Concurrency: the ct study as 64 POSTs, N clients",
        "",
        (
            "| clients | target | MB/s (range) | instances/s | latency p50 / p95 s | peak RSS MiB"
            " | server CPU s/GB | load | check |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["scenario"] == "concurrency":
            lines.append(_row(row, str(row["clients"])))
    lines += [
        "",
        f"## Concurrency limit: `--max-requests {summary['max_requests']}`",
        "",
        (
            "A refused client waits 100 ms and sends the same POST again; its 503 latency is"
            " from connect to the status line, with 64 client threads in one interpreter."
            " The probe, a process of its own, sends a request head with"
            " `Expect: 100-continue` every 50 ms and times the 503 status line."
        ),
        "",
        (
            "| clients | answers | 503 share | 503 latency p50 / p95 / max ms"
            " | probe 503 p50 / p95 / max ms | admitted MB/s | admitted instances/s"
            " | vs no limit, same clients | peak RSS MiB | check |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["scenario"] != "limit":
            continue
        free = _find(rows, scenario="concurrency", target="ours", clients=row["clients"])
        lines.append(
            f"| {row['clients']} | {row['answers']} | {_f(row['refused_share'], '{:.0%}')}"
            f" | {_f(row['refusal_p50_ms'], '{:.1f}')} / {_f(row['refusal_p95_ms'], '{:.1f}')}"
            f" / {_f(row['refusal_max_ms'], '{:.1f}')}"
            f" | {_f(row['probe_p50_ms'], '{:.1f}')} / {_f(row['probe_p95_ms'], '{:.1f}')}"
            f" / {_f(row['probe_max_ms'], '{:.1f}')} ({row['probe_refusals']} probes)"
            f" | {_f(row['mb_per_s'])} | {_f(row['instances_per_s'])}"
            f" | {_f(_ratio(row, free, 'mb_per_s'), '{:.2f}')}"
            f" | {_f(row['peak_rss_max_mib'])} | {_check(row)} |"
        )
    lines += [
        "",
        "## Memory: one POST of the huge study",
        "",
        "| target | MB/s | peak RSS MiB (sampled / VmHWM max) | server CPU s/GB | check |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row["scenario"] == "memory":
            lines.append(
                f"| {LABELS[row['target']]} | {_f(row['mb_per_s'])}"
                f" | {_f(row['peak_rss_mib'])} / {_f(row['peak_rss_max_mib'])}"
                f" | {_f(row['cpu_s_per_gb'], '{:.2f}')} | {_check(row)} |"
            )
    workers = [row for row in rows if row["scenario"] == "workers"]
    if workers:
        lines += [
            "",
            "## Workers: ours at `--workers 1` and at the default beside Orthanc",
            "",
            (
                "Fresh servers every run, warmed up uncounted, targets in an order rotating"
                " run by run. ct16: 16 clients at once, each POSTing its own CT series of one"
                " study; ct and large: one POST, one client; large with 4 clients: 4 POSTs of"
                " a quarter of the study each, beside the disk with 4 writer threads. Peak RSS:"
                " the largest single process (main or worker) and the whole tree, max of sampled"
                " RSS and VmHWM over the runs."
            ),
            "",
            (
                "| study, clients | target | instances/s (range) | MB/s (range)"
                " | latency p50 / p95 s | peak RSS MiB, one process / tree (processes)"
                " | server CPU s/GB | load | check |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in workers:
            low, high = row["mb_per_s_range"]
            i_low, i_high = row["instances_per_s_range"]
            lines.append(
                f"| {row['study']}, {row['clients']} | {WORKERS_LABELS[row['target']]}"
                f" | {_f(row['instances_per_s'])} ({i_low:.0f}-{i_high:.0f})"
                f" | {_f(row['mb_per_s'])} ({low:.0f}-{high:.0f})"
                f" | {_f(row['latency_p50_s'], '{:.2f}')} / {_f(row['latency_p95_s'], '{:.2f}')}"
                f" | {_f(row['peak_process_rss_max_mib'])} / {_f(row['peak_rss_max_mib'])}"
                f" ({_f(row['processes'])})"
                f" | {_f(row['cpu_s_per_gb'], '{:.2f}')}"
                f" | {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} | {_check(row)} |"
            )
    if summary["targets"]:
        lines += [
            "",
            "## Targets (issue 5, point 6)",
            "",
            "| target | required | measured | met | note |",
            "|---|---|---|---|---|",
        ]
    for t in summary["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(
            f"| {t['target']} | {t['required']} | {_f(t['measured'], '{:.2f}')} | {met}"
            f" | {t['note']} |"
        )
    if summary.get("targets_issue12"):
        lines += [
            "",
            "## Targets (issue 12, point 7)",
            "",
            "Ratios of medians taken in the same run (workers scenario).",
            "",
            "| target | required | measured | met | note |",
            "|---|---|---|---|---|",
        ]
        for t in summary["targets_issue12"]:
            lines.append(
                f"| {t['target']} | {t['required']} | {_f(t['measured'], '{:.2f}')}"
                f" | {'yes' if t['met'] else '**no**'} | {t['note']} |"
            )
    return "\n".join(_without_empty_tables(lines)) + "\n"


def _without_empty_tables(lines: list[str]) -> list[str]:
    """The lines without the sections of scenarios that did not run (a
    ``##`` section whose table has no row)."""
    out: list[str] = []
    section: list[str] = []
    for line in [*lines, "## end"]:
        if line.startswith("## "):
            separator = [i for i, text in enumerate(section) if text.startswith("|---")]
            empty = bool(separator) and not any(
                text.startswith("|") for text in section[separator[0] + 1 :]
            )
            if not empty:
                out += section
            section = []
        section.append(line)
    return out[:-1] if out and out[-1] == "" else out


def _check(row: dict[str, Any]) -> str:
    return "ok" if not row["errors"] else "ERROR: " + "; ".join(row["errors"])[:200]


def _row(row: dict[str, Any], first: str) -> str:
    low, high = row["mb_per_s_range"]
    return (
        f"| {first} | {LABELS[row['target']]}"
        f" | {_f(row['mb_per_s'])} ({low:.0f}-{high:.0f}) | {_f(row['instances_per_s'])}"
        f" | {_f(row['latency_p50_s'], '{:.2f}')} / {_f(row['latency_p95_s'], '{:.2f}')}"
        f" | {_f(row['peak_rss_max_mib'])} | {_f(row['cpu_s_per_gb'], '{:.2f}')}"
        f" | {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} | {_check(row)} |"
    )


# Plots.


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, legend, layout, then the PNG; the figure is closed (pyplot keeps it otherwise)."""
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plots(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    colours = {
        "ours": "tab:blue",
        "ours-w1": "tab:green",
        "ours-length": "tab:cyan",
        "orthanc": "tab:orange",
        "sink": "tab:gray",
        "disk": "tab:brown",
        "ours-limited": "tab:purple",
    }

    studies = [s for s in ("large", "ct", "mixed") if _find(rows, scenario="throughput", study=s)]
    if studies:
        targets = [t for t in colours if _find(rows, scenario="throughput", target=t)]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / len(targets)
        for i, target in enumerate(targets):
            values = [
                (_find(rows, scenario="throughput", study=s, target=target) or {}).get("mb_per_s")
                or 0
                for s in studies
            ]
            ax.bar(
                [x + i * width for x in range(len(studies))],
                values,
                width,
                label=LABELS[target],
                color=colours[target],
            )
        ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(studies))])
        ax.set_xticklabels(studies)
        ax.set_yscale("log")
        ax.set_ylabel("MB/s (log scale)")
        _save(plt, fig, ax, "One POST per study (median)", out / "throughput.png")

    concurrency = [r for r in rows if r["scenario"] in ("concurrency", "limit")]
    if concurrency:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for target in colours:
            points = sorted(
                (r["clients"], r["mb_per_s"] or 0) for r in concurrency if r["target"] == target
            )
            if points:
                label = LABELS[target]
                if target == "ours-limited":
                    label += f" {summary['max_requests']} (admitted)"
                ax.plot(*zip(*points, strict=True), marker="o", label=label, color=colours[target])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("MB/s (log scale)")
        _save(plt, fig, ax, "ct study as 64 POSTs (median)", out / "concurrency.png")

    memory = [
        r
        for r in rows
        if r["peak_rss_max_mib"] is not None and r["scenario"] in ("throughput", "memory")
    ]
    if memory:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        names = [f"{r['study']}\n{LABELS[r['target']].replace(', ', chr(10))}" for r in memory]
        ax.bar(
            range(len(memory)),
            [r["peak_rss_max_mib"] for r in memory],
            color=[colours[r["target"]] for r in memory],
        )
        ax.axhline(PEAK_RSS_MIB, color="red", linestyle="--", linewidth=1, label="target 120 MiB")
        ax.set_xticks(range(len(memory)))
        ax.set_xticklabels(names, fontsize=6)
        ax.set_ylabel("server peak RSS, MiB")
        _save(plt, fig, ax, "Peak RSS per POST (max over runs)", out / "memory.png")

    workers = [r for r in rows if r["scenario"] == "workers"]
    if workers:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, field, points, unit in (
            (left, "instances_per_s", [("ct16", 16), ("ct", 1)], "instances/s"),
            (right, "mb_per_s", [("large", 1), ("large", 4)], "MB/s"),
        ):
            targets = [
                t
                for t in ("ours-w1", "ours", "orthanc", "disk")
                if any(_find(workers, study=study, clients=c, target=t) for study, c in points)
            ]
            if not targets:
                continue
            width = 0.8 / len(targets)
            highest = 0.0
            for i, target in enumerate(targets):
                values = [
                    (_find(workers, study=study, clients=c, target=target) or {}).get(field) or 0
                    for study, c in points
                ]
                highest = max(highest, *values)
                ax.bar(
                    [x + i * width for x in range(len(points))],
                    values,
                    width,
                    label=WORKERS_LABELS[target],
                    color=colours[target],
                )
            ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(points))])
            ax.set_xticklabels([f"{study}, {c} client(s)" for study, c in points])
            ax.set_ylabel(f"{unit} (median)")
            ax.set_ylim(0, highest * 1.4 or 1)  # room for the legend above the bars
            if ax is left:
                ax.set_title("Fresh servers per run (median)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "workers.png", dpi=100)
        plt.close(fig)
