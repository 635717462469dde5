"""`python -m accountpool.simulator`: the simulator in its own process (benchmarks, manual runs)."""

from accountpool.simulator.server import main

raise SystemExit(main())
