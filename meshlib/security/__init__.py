"""Security: workload identity and mutual TLS, authorization, end-user authentication.

- ``identity``, ``ca``, ``verify``, ``tls``, ``workload``, ``cli``: certificates and mTLS
  - ``identity``: ``SpiffeId``, a workload's name (``spiffe://<td>/ns/<ns>/sa/<sa>``), strict
  - ``ca``: ``CertificateAuthority`` (the mesh's local root CA, a directory of two files) and the
    ``WorkloadCertificate`` it issues (Istio's shape: the SPIFFE ID as the only SAN, 24 h)
  - ``verify``: the SPIFFE ID of a peer after the handshake, checked (``AcceptedPeers``)
  - ``tls``: ``ssl.SSLContext`` builders for both sides, trusting the mesh CA only
  - ``workload``: ``WorkloadIdentity``, the current certificate and contexts, rotated on use
  - ``cli``: ``meshctl ca init`` and ``meshctl ca issue``
- ``outbound``: what a client sends (DestinationRule ``tls``, auto mTLS), the server checked
  before a request byte goes out
- ``authz``: AuthorizationPolicy compiled into a decision (``decide``)
- ``paths``: request path normalisation before path rules (Istio's ``pathNormalization``)
- ``jwt``, ``jwks``: RequestAuthentication's JWT rules and their key sets

Importing ``meshlib`` does not import this package (PyJWT and cryptography load only here).
"""
