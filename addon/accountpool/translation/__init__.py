"""Chat Completions ↔ Responses translation (issue 8), so a ChatGPT login can serve any client of the pool.

A login's backend speaks only streamed, stateless Responses. Pure functions and incremental translators,
no I/O: what a client's request becomes (`request_mapping`), the event stream as a Chat Completions stream
(`chat_stream`), and one whole answer from the whole stream (`whole_answer`).
`accountpool.routing.response_shapers` decides when to use them.
"""
