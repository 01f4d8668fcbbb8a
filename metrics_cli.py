"""`python metrics.py PRED.jsonl`: every column of report.md's results table, recomputed from a
predictions file.

PRED.jsonl holds one {"reference": str, "prediction": str} per line; the pipeline's
predictions-<system>.jsonl are such files. Defaults are the report's (Config's): CoNaLa tokens for
CodeBLEU, the embedded MiniLM for BERTScore, exec_timeout_s for --gold. Gold and chrF come from the
evaluation's own functions (feedback.judge, evaluate.sentence_chrf, evaluate.mean), so the numbers
are the report's, not a second implementation of them. Only `proxy` cannot be recomputed here: it
needs the run's checkpoint-reward/. Flags are snake_case like rlhf.py's; the older dashed spellings
(--codebleu-tokenizer, --no-bertscore, ...) still work.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import codebleu_score
import metrics
from config import Config


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="metrics.py", description=(
        "Score PRED.jsonl (lines of {reference, prediction}) with every metric of report.md: "
        "CodeBLEU and its parts, BLEU, CoNaLa BLEU, ROUGE-L, RUBY, syntax validity, exact match, "
        "BERTScore, chrF, and with --gold the annotator's gold score. Defaults are report.md's."))
    p.add_argument("predictions", help="JSONL file with 'reference' and 'prediction' on each line")
    p.add_argument("--codebleu_tokenizer", "--codebleu-tokenizer",
                   choices=codebleu_score.TOKENIZERS, default=d.codebleu_tokenizer,
                   help="CodeBLEU n-gram tokens: conala (report.md's; the default) "
                        "or whitespace (the codebleu 0.7.0 package's)")
    p.add_argument("--gold", action="store_true",
                   help="also the annotator's gold score, as report.md computes it "
                        "(sandboxed execution when a sandbox is available)")
    p.add_argument("--exec_timeout_s", "--exec-timeout-s", type=float, default=d.exec_timeout_s,
                   help="limit per sandboxed execution, for --gold (default %(default)s)")
    p.add_argument("--no_bertscore", "--no-bertscore", action="store_true",
                   help="skip BERTScore (it loads an encoder)")
    p.add_argument("--bertscore_model", "--bertscore-model", default=d.bertscore_model,
                   help="BERTScore's encoder (default %(default)s)")
    p.add_argument("--bertscore_layers", "--bertscore-layers", type=int, default=None,
                   help="hidden layer BERTScore reads; default: the encoder's last "
                        f"(the report: {d.bertscore_layers}, MiniLM's last)")
    p.add_argument("--per_example", "--per-example", action="store_true",
                   help="include per-example lists in --out")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def score(references: list[str], predictions: list[str], args) -> dict:
    """report.json's systems row for these predictions, keys in its order (gold first, chrf
    last)."""
    import evaluate

    result, per = {}, {}
    if args.gold:
        import feedback
        import sandbox

        judged = feedback.judge(predictions, references, args.exec_timeout_s,
                                log=lambda m: print(m, file=sys.stderr))
        per["gold"] = [j["score"] for j in judged]
        ok, status = sandbox.sandbox_status()
        result |= {"gold": evaluate.mean(per["gold"]),
                   "gold_exec": "sandbox" if ok else f"off ({status})"}
    result |= metrics.evaluate(references, predictions, codebleu_tokenizer=args.codebleu_tokenizer,
                               with_bertscore=not args.no_bertscore,
                               bertscore_model=args.bertscore_model,
                               bertscore_layers=args.bertscore_layers, per_example=args.per_example)
    per["chrf"] = evaluate.sentence_chrf(references, predictions)
    result["chrf"] = evaluate.mean(per["chrf"])
    if args.per_example:
        result["per_example"] |= per
    return result


def format_table(result: dict) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
            for k, v in result.items() if k != "per_example"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        references, predictions = metrics.load_predictions(args.predictions)
        result = score(references, predictions, args)
        print(format_table(result))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
