"""AuthService: register, login, refresh and logout, delegated to AuthCore."""

from __future__ import annotations

from lending.v1 import auth_pb2, auth_pb2_grpc

from lending_grpc.api import messages
from lending_grpc.api.call import current_call
from lending_grpc.core.auth import AuthCore


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Thin adapter: fields in, core call, message out. Errors are mapped by the pipeline."""

    def __init__(self, auth: AuthCore) -> None:
        self._auth = auth

    def Register(self, request, context):
        return messages.user(
            self._auth.register(current_call().actor, request.username, request.password, request.email)
        )

    def Login(self, request, context):
        return messages.tokens(self._auth.login(current_call().actor, request.username, request.password))

    def RefreshToken(self, request, context):
        return messages.tokens(self._auth.refresh(current_call().actor, request.refresh_token))

    def Logout(self, request, context):
        self._auth.logout(current_call().actor)
        return auth_pb2.LogoutResponse()
