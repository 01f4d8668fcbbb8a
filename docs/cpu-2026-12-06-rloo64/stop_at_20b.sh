#!/bin/bash
# pre-registered at step 2 from the timing (~67 s a step): 20 PPO steps, so the evaluation fits the session
while ! grep -q "ppo 19/30" /work/runs/cpu5-ppo.log; do sleep 3; done
pid=$(pgrep -f "rlhf.py --resume /work/runs/cpu5" | head -1)
kill -INT $pid; echo "SIGINT to $pid at $(date)"
while kill -0 $pid 2>/dev/null; do sleep 3; done
echo "ppo stopped at $(date); suite in a clean clone"
rm -rf /work/ci-clone; git clone -q /work/main /work/ci-clone && ln -s /work/main/.venv /work/ci-clone/.venv
(cd /work/ci-clone && timeout 1500 .venv/bin/python -m pytest -q -p no:cacheprovider > /work/runs/suite.log 2>&1); echo "suite rc $? at $(date)"
cd /work/wt-run
nice -n -5 .venv/bin/python rlhf.py --resume /work/runs/cpu5 --ppo_steps=20 --eval_systems=sft,ppo --sharpen_temperatures= > /work/runs/cpu5-eval1.log 2>&1
echo "eval1 rc $? at $(date)"
rm -rf /work/quick-clone; git clone -q /work/main /work/quick-clone && cd /work/quick-clone && bash setup.sh > /work/runs/quick-setup.log 2>&1
/usr/bin/time -v .venv/bin/python rlhf.py --config quick > /work/runs/quick.log 2>&1
echo "quick rc $? at $(date)"
