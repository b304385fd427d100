"""The embedded AWS emulator: moto in server mode, in this process, on a free localhost port.

Server mode rather than moto's in-process mock because the ECS tasks run as subprocesses (as Fargate
runs containers) and must reach the same S3, DynamoDB and Step Functions over HTTP. Step Functions
really executes the state machine (`execute_state_machine`), and its service integrations call back
into this server at localhost:MOTO_PORT, so MOTO_PORT is set to the port we got.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kpipe.local import shims

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Variables that would point boto3 elsewhere than the emulator (a profile, a session token, a config file).
_STRIPPED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE")


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1 and a free port, with Step Functions execution on."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.requested_port = host, port
        self._server: Any = None
        self._saved_moto_port: str | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        shims.install()
        # werkzeug logs every request at INFO on stderr; the emulator's users want their progress there.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # moto logs every failed execution's state at ERROR; the pipeline reports failures itself.
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.requested_port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        # Step Functions integrations (ecs, dynamodb, aws-sdk) call http://localhost:$MOTO_PORT.
        self._saved_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self.port)
        self.configure({"stepfunctions": {"execute_state_machine": True}})
        return self

    def configure(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """POST /moto-api/config (the documented switch for server mode)."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/config",
            data=json.dumps(config).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):  # the switch is process-wide: leave moto as we found it
                self.configure({"stepfunctions": {"execute_state_machine": False}})
            self._server.stop()
            self._server = None
            if self._saved_moto_port is None:
                os.environ.pop("MOTO_PORT", None)
            else:
                os.environ["MOTO_PORT"] = self._saved_moto_port

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def emulator_environment(endpoint: str | None, region: str = REGION) -> dict[str, str]:
    """What boto3 needs to talk to the emulator and nothing else (for subprocesses and this process).
    `endpoint=None`: moto's in-process mock, which intercepts every client whatever its endpoint."""
    env = {"AWS_DEFAULT_REGION": region, "AWS_REGION": region, **CREDENTIALS}
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


@contextmanager
def environ(values: Mapping[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and unset) environment variables for the duration, then restore exactly what was there."""
    saved = {name: os.environ.get(name) for name in (*values, *unset)}
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def pointed_at(endpoint: str | None, extra: Mapping[str, str] | None = None, region: str = REGION) -> Iterator[None]:
    """Point this process's boto3 (and chalicelib.aws's cached clients) at the emulator, then restore."""
    from chalicelib import aws, trigger

    wanted = {**emulator_environment(endpoint, region), **(extra or {})}
    stripped = (*_STRIPPED, "AWS_ENDPOINT_URL") if endpoint is None else _STRIPPED
    with environ(wanted, stripped):
        aws.reset()
        trigger.clear_config_cache()
        try:
            yield
        finally:
            aws.reset()
            trigger.clear_config_cache()
