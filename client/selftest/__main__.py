"""``python -m client.selftest``: the same as ``gatehouse --self-test``."""

from client.selftest import main

raise SystemExit(main())
