package egress

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// Helpers: other processes of the runtime that read what a sandbox sends
// (the process monitor) are started the way the keeper starts the
// gateway's serving process, and hold as little.

// StartConfined starts cmd from a locked thread that has dropped its
// capability bounding and ambient sets, set no_new_privs and applied a
// Landlock ruleset (where the kernel has Landlock) that allows executing
// the files this binary maps and reading the loader's cache, nothing
// else: the child, the same binary, opens no file by name and works on
// the descriptors it is given. cmd must run as a user and group other
// than root (SysProcAttr.Credential). Where keep is not nil the forking
// thread lives until keep is closed, for a parent-death signal is tied
// to the thread; with keep nil cmd must not set Pdeathsig.
func StartConfined(cmd *exec.Cmd, keep <-chan struct{}) error {
	if a := cmd.SysProcAttr; a == nil || a.Credential == nil || a.Credential.Uid == 0 || a.Credential.Gid == 0 {
		return errors.New("start confined: the process must run as a user and group other than root")
	}
	if keep == nil && cmd.SysProcAttr.Pdeathsig != 0 {
		return errors.New("start confined: a parent-death signal needs the forking thread kept")
	}
	rs, err := helperRuleset()
	if err != nil {
		return err
	}
	if rs != nil {
		defer rs.Close()
	}
	// os/exec opens /dev/null for a nil stream in the forking thread,
	// which Landlock no longer lets open it.
	var null *os.File
	if cmd.Stdin == nil || cmd.Stdout == nil || cmd.Stderr == nil {
		if null, err = os.Open(os.DevNull); err != nil {
			return fmt.Errorf("start confined: %w", err)
		}
		defer null.Close()
		if cmd.Stdin == nil {
			cmd.Stdin = null
		}
		if cmd.Stdout == nil {
			cmd.Stdout = null
		}
		if cmd.Stderr == nil {
			cmd.Stderr = null
		}
	}
	var hold chan struct{}
	if keep != nil {
		hold = make(chan struct{})
	}
	err = onLockedThread(func() error {
		if err := dropThread(rs); err != nil {
			return err
		}
		return cmd.Start()
	}, hold)
	if hold != nil {
		if err != nil {
			close(hold)
		} else {
			go func() { <-keep; close(hold) }()
		}
	}
	return err
}

// helperRuleset allows what a helper's exec needs: the files this binary
// maps (the helper is the same binary) and the loader's cache.
func helperRuleset() (*ruleset, error) {
	return execRuleset()
}
