// Command pause is the tests' pod sandbox process: it does nothing until
// it is told to stop. It execs nothing, so it runs under any policy.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
