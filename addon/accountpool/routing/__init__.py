"""The decisions of one request and its attempt loop: which account, when it comes back, what the client is told.

`router` sequences one request's attempts (each judged by `accountpool.upstream.classify`); the pure decisions
it calls live beside it (`selection`, `recovery`, `admission_queue`, `errors`), with the request it routes
(`admitted`) and what each attempt sends and how its answer is shaped (`response_shapers`). How one attempt
travels is `accountpool.upstream`; what is remembered is `accountpool.storage`.
"""
