"""The AWS side of the `aws` provider: the EC2 client, credentials, errors, retries.

boto3 is an optional extra (`provisioning[aws]`) and is imported here only
when a client is first needed, i.e. inside the task process that calls AWS
(PITFALLS: `import boto3` plus a client is ~0.6 s and ~66 MB per process).
Nothing in this module runs when the CLI merely loads an aws infra.

Credentials come only from boto3's own chain (environment, shared
credentials/config files and profiles, container and instance roles); the
provider never reads, logs or stores them. Errors become ProvisioningError
with the AWS error code and a plain reason. Throttling is retried here with
capped, full-jitter backoff, within a budget: never silently forever, and
the task's own timeout (which kills the process) always wins.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from provisioning.errors import ProvisioningError
from provisioning.ops.providers.sdk import import_sdk

RETRY_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded",
                         "TooManyRequestsException", "RequestThrottled", "SlowDown"})
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 20.0
RETRY_BUDGET_S = 120.0  # all retries of one call; then the throttling error is the failure
MAX_ATTEMPTS = 10

AUTH_CODES = frozenset({"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId",
                        "SignatureDoesNotMatch", "UnrecognizedClientException",
                        "ExpiredToken", "RequestExpired", "OptInRequired"})
REASONS = {
    "AuthFailure": "AWS refused the credentials",
    "UnauthorizedOperation": "the credentials are not allowed to do this",
    "InvalidClientTokenId": "AWS does not know this access key",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "InstanceLimitExceeded": "instance quota reached in this region",
    "VcpuLimitExceeded": "vCPU quota reached in this region",
    "InsufficientInstanceCapacity": "AWS has no capacity for this plan in this zone",
    "InvalidAMIID.NotFound": "unknown image (ami id) in this region",
    "InvalidAMIID.Malformed": "the image is not an ami id",
    "InvalidInstanceType": "unknown plan (instance type)",
    "InvalidParameterValue": "a value was refused (plan, zone or image?)",
    "InvalidKeyPair.NotFound": "unknown key pair (key_name) in this region",
    "InvalidSubnetID.NotFound": "unknown subnet_id",
    "InvalidVpcID.NotFound": "unknown vpc_id",
    "InvalidGroup.NotFound": "unknown security_group_id",
    "Unsupported": "this plan is not offered in this zone",
    "InvalidParameterCombination": "these settings do not go together",
}


def _looked_in() -> str:
    """Where boto3's chain looks, for the message of a missing credential."""
    creds = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    return ("environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: "
            f"{'set' if os.environ.get('AWS_ACCESS_KEY_ID') else 'not set'}), "
            f"profile '{profile}' in {creds} and {config}, web identity, "
            "container and instance-role endpoints")


class Ec2:
    """One EC2 client for an infra's [provider] settings (region, optional
    endpoint_url), made on first use."""

    def __init__(self, settings: dict[str, Any], *, log: Any = None):
        self.region = str(settings.get("region", ""))
        self.endpoint_url = settings.get("endpoint_url") or None
        self.log = log or (lambda message: None)
        self._client: Any = None
        self.credential_source = ""

    def client(self) -> Any:
        if self._client is None:
            # lazy: boto3 is an optional extra, loaded only in the task that calls AWS
            # (pip extra, or the providers bundle beside the zipapp's lib dir: sdk.py)
            boto3 = import_sdk("boto3", provider="aws", extra="aws")
            import botocore.config
            import botocore.exceptions
            try:
                session = boto3.session.Session(region_name=self.region)
                creds = session.get_credentials()
            except botocore.exceptions.BotoCoreError as e:  # ProfileNotFound, bad config
                raise ProvisioningError(f"aws credentials: {e} (boto3 looked in: "
                                        f"{_looked_in()})") from None
            if creds is None:
                raise no_credentials()
            self.credential_source = getattr(creds, "method", "") or "unknown"
            config = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                            connect_timeout=10, read_timeout=60)
            self._client = session.client("ec2", endpoint_url=self.endpoint_url,
                                          config=config)
        return self._client

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One EC2 API call; throttling retried with capped, jittered backoff."""
        import botocore.exceptions  # lazy: see client()

        client = self.client()
        delay, deadline = RETRY_FIRST_S, time.monotonic() + RETRY_BUDGET_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return getattr(client, operation)(**kwargs)
            except botocore.exceptions.ClientError as e:
                code = error_code(e)
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                wait = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not a secret
                throttled = code in RETRY_CODES or status == 429
                if throttled and attempt < MAX_ATTEMPTS and time.monotonic() + wait < deadline:
                    self.log(f"aws {operation}: {code or status}, retry {attempt} "
                             f"in {wait:.1f}s")
                    time.sleep(wait)  # backoff between attempts, not a wait for a state
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                raise self.failure(operation, e) from None
            except botocore.exceptions.NoCredentialsError:
                raise no_credentials() from None
            except botocore.exceptions.BotoCoreError as e:  # endpoint unreachable, timeouts
                raise ProvisioningError(f"aws {operation} failed: {e}") from None
        raise AssertionError("unreachable")

    def failure(self, operation: str, e: Any) -> ProvisioningError:
        code = error_code(e)
        aws_message = e.response.get("Error", {}).get("Message", "")
        reason = REASONS.get(code, "the request was refused")
        where = ""
        if code in AUTH_CODES:
            where = (f"; the credentials came from boto3's '{self.credential_source}' "
                     f"source (it looks in: {_looked_in()})")
        error = ProvisioningError(f"aws {operation} failed: {code}: {reason}"
                                  + (f" ({aws_message})" if aws_message else "") + where)
        error.aws_code = code  # type: ignore[attr-defined]  # AWS answered: a definite no
        return error

    def paginate(self, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item under `key` of a paginated describe call."""
        out: list[dict[str, Any]] = []
        token = None
        while True:
            page = self.call(operation, **kwargs, **({"NextToken": token} if token else {}))
            if key == "Instances":
                out.extend(i for r in page.get("Reservations", []) for i in r["Instances"])
            else:
                out.extend(page.get(key, []))
            token = page.get("NextToken")
            if not token:
                return out


def no_credentials() -> ProvisioningError:
    return ProvisioningError(f"aws: no credentials found (boto3 looked in: {_looked_in()})",
                             hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                             "for the daemon, or give the host an instance role")


def error_code(e: Any) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def tags_of(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}
