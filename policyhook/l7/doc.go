// Package l7 decides HTTP requests against an egress rule's L7 grants: the
// access preset or the method/path rules of an OpenShell v1 endpoint
// (network_policies.<k>.endpoints[].{access, rules[].allow{method, path}}).
//
// It is pure: no I/O, no state beyond what Compile builds, and an Endpoint
// is safe for concurrent use. It never forwards, rewrites or logs; the
// egress gateway does, and it alone turns an audit rule's Deny into an
// allowed-and-recorded request. Everything Decide is given comes from the
// sandbox and is treated as hostile: what it cannot read unambiguously it
// refuses.
//
// Semantics (docs/l7.md says why, and where upstream agrees):
//
//   - access: read-only is GET, HEAD, OPTIONS; read-write adds POST, PUT,
//     PATCH; full is any method. All on every path. access and rules on one
//     endpoint are refused by Compile, as upstream refuses them.
//   - rules: the first rule in policy order that matches names the
//     decision. Methods compare exactly after the rule's method is
//     upper-cased; the request's is not (get is not GET). "*" is any
//     method; a GET rule also allows HEAD.
//   - paths: "*" matches any run of bytes within one segment (including
//     none: "/a/*" matches "/a/"); a whole segment "**" matches one or more
//     segments ("/a/**" matches "/a/" and "/a/b/c", not "/a"); the bare
//     path "**" matches every path and the request-target *; the bare path
//     "*" is allowed only with OPTIONS and matches only the request-target
//     *. Paths are case-sensitive; a trailing slash is significant.
//   - the request path is normalised before matching (NormalizePath):
//     unreserved escapes decoded, the rest upper-cased, dot segments
//     removed; encoded "/", "\", "%", controls, invalid or overlong UTF-8,
//     empty segments, "..." and ";params" on dot segments, fragments and
//     climbs above the root are refused.
package l7
