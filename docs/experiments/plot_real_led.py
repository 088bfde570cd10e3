"""The plot of docs/experiments.md, section 10: each method's raw fine-tune as the change on
general Swedish (cv-dev, x) against the change on held-out in-domain phrases (lexin, y).

usage: python docs/experiments/plot_real_led.py  (writes real-led.png beside this file)"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
rows = list(csv.DictReader((here / "real-led.csv").open(encoding="utf-8")))
start = rows[0]
fig, ax = plt.subplots(figsize=(8, 6))
for key, r in zip("ABCDEFGHIJ", rows[1:], strict=False):
    dx = float(r["cv_dev"]) - float(start["cv_dev"])
    dy = 100 * (float(r["lexin_test"]) / float(start["lexin_test"]) - 1)
    ax.scatter(dx, dy, s=30, label=f"{key}: {r['method']}")
    ax.annotate(key, (dx, dy), fontsize=9, xytext=(4, 3), textcoords="offset points")
ax.axvline(0.5, color="red", lw=0.8, ls="--", label="cv-dev tolerance (+0.5)")
ax.axhline(0, color="grey", lw=0.6)
ax.axvline(0, color="grey", lw=0.6)
ax.set_xlabel("cv-dev WER change, points (out of domain; right is worse)")
ax.set_ylabel("held-out lexin phrases, WER change % (down is better)")
ax.set_title("Raw fine-tunes at the demo's budget (120 steps), start = bundled:base")
ax.legend(loc="upper right", fontsize=7)
fig.tight_layout()
fig.savefig(here / "real-led.png", dpi=120)
