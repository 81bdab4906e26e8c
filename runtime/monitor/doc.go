// Package monitor is a sandbox's process monitor: a server for gVisor's
// remote trace sink (runsc connects to it at create when started with
// --pod-init-config), which turns the sentry's trace points into a
// timeline of what the sandbox's processes did (exec, clone, exit,
// connect and, when asked, opens), with a process table that names each
// event's binary. Which binary opened a connection, for per-binary egress
// rules, is not read from here: a connect event carries no local port,
// so the gateway takes it from openshell's runsc sink instead (runsc/sink,
// runtime/egress/attribution.go).
//
// Everything it reads comes from the sentry, which runs the agent's code
// and is not trusted: every packet, string and list is bounded, and a
// malformed packet is counted and skipped, never fatal. It must never
// store an environment value: the sentry sends the full environment with
// every exec, and only the variables' names are kept.
package monitor
