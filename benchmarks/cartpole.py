"""The end-to-end meta-RL benchmark on CartPole task distributions (issue: benchmarks.cartpole).

Not built yet: it needs the envs, maml and adapt packages to be finished first. Rather than
print made-up numbers, it says so and exits with status 2.
"""

import sys


def main() -> int:
    print(
        "benchmarks.cartpole: the end-to-end meta-RL benchmark is not implemented yet.\n"
        "Available now: `python -m benchmarks.throughput` (rollout speed) and the test suite.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
