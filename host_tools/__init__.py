"""Host tools of the device workflow: the serial frame protocol (``frame``), the
request/response link over pyserial (``link``). See docs/protocol.md."""
