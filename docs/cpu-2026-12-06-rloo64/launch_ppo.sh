#!/bin/bash
# wait for the sft,reward run to exit, then rebuild policy_samples.jsonl and resume with the new cpu preset
while pgrep -f "output_dir /work/runs/cpu5" >/dev/null; do sleep 5; done
cd /work/wt-run
.venv/bin/python /work/runs/tools/extract_policy_samples.py /work/runs/cpu5 > /work/runs/extract.log 2>&1
exec nice -n -5 .venv/bin/python rlhf.py --resume /work/runs/cpu5 --stages=sft,reward,ppo,eval --ppo_steps=30 \
  --batch_size=64 --mini_batch_size=64 --ppo_epochs=1 --learning_rate=3e-5 --lr_decay=false --lr_warmup_steps=2 \
  --missing_eos=filter --advantage_norm=none --eval_every=10 --save_every=5 --eval_bertscore=false \
  --eval_samples=4 --sharpen_temperatures=0.4,0.6,0.8 --sft_rs=true --bootstrap_samples=10000 \
  --eval_systems=sft,sft-rs,ppo
