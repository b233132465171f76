"""The markdown throughput table both curation benchmarks print (the README's tables are copied from it)."""

from __future__ import annotations


def throughput_table(first_column: str, whole_run_column: str, rows: list[tuple[str, dict]]) -> list[str]:
    """One line per (name, result): clips/s once the cluster is up (`clips_per_s_processing`, or the whole
    run's figure where nothing is started) and clips/s over the whole run."""
    lines = [f"| {first_column} | clips/s, cluster up | {whole_run_column} |", "|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r.get('clips_per_s_processing', r['clips_per_s']):.2f} | {r['clips_per_s']:.2f} |")
    return lines
