"""One-off for a run whose reward stage predates policy_samples.jsonl: rebuild it from the train pairs.
Every policy sample that entered any train pair (kind "policy"), per intent; samples identical to the
reference (kept under the kind "reference" by feedback.build_candidates) are lost, so the rebuilt file can
only have fewer samples per intent than the reward stage drew."""
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
by_q = {}
for line in (run / "preference_pairs_train.jsonl").read_text(encoding="utf-8").split("\n"):
    if not line.strip():
        continue
    p = json.loads(line)
    row = by_q.setdefault(p["question_id"], {"question_id": p["question_id"], "intent": p["intent"],
                                             "reference": p["reference"], "samples": []})
    for side in ("chosen", "rejected"):
        if p[f"{side}_kind"] == "policy" and p[side] not in row["samples"]:
            row["samples"].append(p[side])
rows = [r for r in by_q.values() if r["samples"]]
with open(run / "policy_samples.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(f"{len(rows)} intents, {sum(len(r['samples']) for r in rows)} samples -> {run / 'policy_samples.jsonl'}")
