"""moto_server, with its authentication errors shaped as STS really sends them.

moto (5.2) serialises the errors of its SigV4/IAM checks (SignatureDoesNotMatch,
InvalidClientTokenId, AccessDenied, AuthFailure) for every service as
    <ErrorResponse><Errors><Error><Code>…</Code>…</Error></Errors></ErrorResponse>
STS (and IAM), awsQuery services, answer
    <ErrorResponse><Error><Type>Sender</Type><Code>…</Code><Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>
and the SDKs' awsQuery error parsers (aws-sdk-rust's among them) read only that shape: against
plain moto, a refused signature reaches the client as a 403 without an error code.

Run with the virtualenv's python, with moto_server's arguments (testkit::moto does).
"""

import sys
import uuid

from moto.core import exceptions
from moto.server import main
from xmltodict import unparse

AUTH_ERRORS = (
    exceptions.SignatureDoesNotMatchError,
    exceptions.InvalidClientTokenIdError,
    exceptions.AccessDeniedError,
    exceptions.AuthFailureError,
)


def _aws_query_shape(cls):
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        error = {"Type": "Sender", "Code": self.error_type, "Message": self.message}
        body = {"ErrorResponse": {"Error": error, "RequestId": str(uuid.uuid4())}}
        self.description = unparse(body, full_document=True)

    cls.__init__ = __init__


for _cls in AUTH_ERRORS:
    _aws_query_shape(_cls)

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    sys.exit(main())
