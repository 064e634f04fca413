"""The client side of the `lending-grpc` command line: register, login, loan ..., pay, delinquent."""
