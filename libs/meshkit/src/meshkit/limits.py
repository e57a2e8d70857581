"""What a client may send, and how large an error may grow: every bound in one place.

A request over a limit is refused with INVALID_ARGUMENT naming the field and the limit, found
by its size alone: the length is checked before any regex, decode or loop runs over the value.
The one exception is the message size, which grpcio enforces before any handler runs and
answers RESOURCE_EXHAUSTED ("Received message larger than max").
"""

from __future__ import annotations

# --- requests -------------------------------------------------------------------------------

#: grpc.max_receive_message_length of every server. The largest valid request (CreateOrder
#: with MAX_LINES lines of the longest SKUs and the longest ids) is 2,147 bytes, so this is a
#: hundredfold margin. It bounds what a hostile message costs before validation can refuse it:
#: grpcio parses the whole message first, and 1 MiB of empty repeated lines parses into about
#: 24 MB of protobuf objects (in 45 ms), per worker thread; 256 KiB keeps that near 6 MB.
MAX_RECEIVE_MESSAGE_BYTES = 256 * 1024

#: Lines of one order, and so of one reservation (order forwards its lines to inventory).
MAX_LINES = 50
#: Units of one SKU in one line.
MAX_QUANTITY = 1000

MAX_SKU_LENGTH = 32
MAX_CUSTOMER_ID_LENGTH = 64
#: AIP-155 request ids: room for a UUID with a prefix, or "charge-" + an order id.
MAX_REQUEST_ID_LENGTH = 128
#: Ids the services issue (``ord_``/``pay_``/``res_`` + 32 hex, 36 characters) are checked
#: against this before their exact pattern.
MAX_RESOURCE_ID_LENGTH = 64
#: Issued tokens are at most 128 characters (ListOrders); the bound also caps the decoded JSON
#: at 192 bytes, so its nesting can never approach Python's recursion limit.
MAX_PAGE_TOKEN_LENGTH = 256

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# --- errors ---------------------------------------------------------------------------------
#
# An error travels in the trailers: grpc-message (percent-encoded, up to 3 bytes per byte)
# and grpc-status-details-bin (base64 of a google.rpc.Status holding the message again and the
# BadRequest). grpcio refuses metadata over 8 KB by default, and Envoy resets its shared
# upstream connection on trailers it will not pass, so these keep every error's trailers under
# ERROR_TRAILER_BUDGET_BYTES whatever the request held.

#: Field violations listed in one error; the rest are counted ("and 290 more").
MAX_FIELD_VIOLATIONS = 10
#: A client's value echoed in an error is cut to this many characters of its repr.
SHOWN_VALUE_CHARS = 32
#: UTF-8 bytes of a violation's field path and of its description.
MAX_FIELD_BYTES = 48
MAX_DESCRIPTION_BYTES = 120
#: UTF-8 bytes of a status message.
MAX_STATUS_MESSAGE_BYTES = 320
#: What grpc-message and grpc-status-details-bin add up to at most, encoded. The limits above
#: allow about 3.2 KB at worst (every text at its limit and all of it percent-encoded); half
#: of grpcio's 8 KB leaves room for the other trailers and for the limits to grow a little.
ERROR_TRAILER_BUDGET_BYTES = 4096
