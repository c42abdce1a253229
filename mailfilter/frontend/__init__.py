"""The network front ends: protocols in, `(envelope, raw bytes)` to the message handler,
its decision back out as protocol replies. The SMTP proxy (`smtp.py`) and the milter
(`milter.py` over the sans-IO codec `milter_protocol.py`); the operator's commands are in
`mailfilter.cli`."""
