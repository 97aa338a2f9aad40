"""Write a random-weight model folder for trying the course on another architecture without the hub.

    python scripts/random_model.py qwen2 /tmp/tiny-qwen2      # tiny: seconds per notebook on a CPU
    python scripts/random_model.py bloom /tmp/tiny-bloom
    python scripts/random_model.py qwen2.5-1.5b /tmp/qwen-1.5b-random   # the real shape, for a GPU run
    PEFTEDU_MODEL=/tmp/tiny-qwen2 jupyter lab

Random weights check that every cell *runs* on that architecture; they learn nothing worth scoring.
"""

import argparse

from peftedu.course.models import PRECISIONS, TINY_ARCHITECTURES, write_random_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("arch", help=f"one of {', '.join(TINY_ARCHITECTURES)} (tiny) or a shipped config name")
parser.add_argument("folder")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--tokenizer", default=None, help="a model folder or alias whose tokenizer to use (default: SmolLM2's)")
parser.add_argument("--dtype", default="fp32", choices=list(PRECISIONS), help="weights' dtype (bf16 halves a 1B model)")
args = parser.parse_args()
print(write_random_model(args.folder, args.arch, seed=args.seed, tokenizer_from=args.tokenizer,
                         dtype=PRECISIONS[args.dtype]))
