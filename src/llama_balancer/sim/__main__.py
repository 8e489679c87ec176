"""`python -m llama_balancer.sim [flags]`: the same as `llama-balancer sim-backend`."""

from .cli import main

raise SystemExit(main())
