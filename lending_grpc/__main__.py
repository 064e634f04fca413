"""`python -m lending_grpc serve` runs the same command line as `lending-grpc`."""

from lending_grpc.cli.main import main

raise SystemExit(main())
