"""Security: workload identity and mutual TLS, authorization, end-user authentication.

- ``identity``, ``ca``, ``verify``, ``tls``, ``workload``, ``cli``: certificates and mTLS
- ``authz``: AuthorizationPolicy compiled into a decision (``decide``)
- ``paths``: request path normalisation before path rules (Istio's ``pathNormalization``)
- ``jwt``, ``jwks``: RequestAuthentication's JWT rules and their key sets

Importing ``meshlib`` does not import this package (PyJWT and cryptography load only here).
"""
