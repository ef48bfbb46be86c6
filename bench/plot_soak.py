"""Draws bench/soak.png from bench/soak.csv (written by `make soak`)."""
import csv
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = pathlib.Path(__file__).parent
rows = list(csv.DictReader(open(here / "soak.csv")))
t = [int(r["t_s"]) for r in rows]
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(t, [float(r["rss_mb"]) for r in rows], label="Envoy RSS (MB)")
ax.plot(t, [float(r["heap_mb"]) for r in rows], label="Envoy heap (MB)")
ax.set_xlabel("seconds")
ax.set_ylabel("MB")
ax.set_ylim(bottom=0)
kb = ax.twinx()
kb.plot(t, [float(r["synced_set_kb"]) for r in rows], color="tab:green", label="synced set in shared data (KB, right)")
kb.set_ylabel("KB")
kb.set_ylim(bottom=0, top=max(1.0, 2 * max(float(r["synced_set_kb"]) for r in rows)))
ax.set_title("keygate soak: mixed traffic, key_sync every 2 s, --concurrency 2")
lines = ax.get_legend_handles_labels()
more = kb.get_legend_handles_labels()
ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(here / "soak.png", dpi=100)
print(f"wrote {here / 'soak.png'}")
