// Command attacker is what a hostile agent runs inside a sandbox in the
// attack corpus (integration/attack_test.go): each subcommand tries one
// escape with raw syscalls and prints ALLOWED or DENIED with the errno.
// It is built static, so it runs in any image.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: attacker ATTACK [ARG]")
		os.Exit(2)
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	var err error
	switch os.Args[1] {
	case "clone-newuser":
		err = cloneFlags(unix.CLONE_NEWUSER)
	case "clone-newnet":
		err = cloneFlags(unix.CLONE_NEWNET)
	case "clone-newns":
		err = cloneFlags(unix.CLONE_NEWNS)
	case "clone-newpid":
		err = cloneFlags(unix.CLONE_NEWPID)
	case "clone3-newuser":
		err = clone3(unix.CLONE_NEWUSER)
	case "unshare-newuser":
		err = unix.Unshare(unix.CLONE_NEWUSER)
	case "chmod-setuid":
		err = create(arg, 0o755)
		if err == nil {
			err = unix.Chmod(arg, 0o4755)
		}
	case "chmod-setgid":
		err = create(arg, 0o755)
		if err == nil {
			err = unix.Fchmodat(unix.AT_FDCWD, arg, 0o2755, 0)
		}
	case "fchmod-setuid":
		err = create(arg, 0o755)
		if err == nil {
			var fd int
			if fd, err = unix.Open(arg, unix.O_RDONLY, 0); err == nil {
				err = unix.Fchmod(fd, 0o4755)
				unix.Close(fd)
			}
		}
	case "open-setuid":
		var fd int
		if fd, err = unix.Open(arg, unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL, 0o4755); err == nil {
			unix.Close(fd)
		}
	case "mknod-setuid":
		err = unix.Mknod(arg, unix.S_IFREG|0o4755, 0)
	case "raw-socket":
		var fd int
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP); err == nil {
			unix.Close(fd)
		}
	case "packet-socket":
		var fd int
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0); err == nil {
			unix.Close(fd)
		}
	case "mount-tmpfs":
		err = unix.Mount("none", arg, "tmpfs", 0, "")
	case "setuid-root":
		err = unix.Setuid(0)
	case "write":
		err = os.WriteFile(arg, []byte("attacker was here\n"), 0o644)
	case "symlink":
		// attacker symlink TARGET LINK
		if len(os.Args) < 4 {
			fmt.Fprintln(os.Stderr, "usage: attacker symlink TARGET LINK")
			os.Exit(2)
		}
		err = os.Symlink(arg, os.Args[3])
	case "alloc":
		// attacker alloc MiB: touch that much memory.
		var mib int
		fmt.Sscan(arg, &mib)
		chunks := make([][]byte, 0, mib)
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = 1
			}
			chunks = append(chunks, b)
		}
		fmt.Printf("allocated %d MiB\n", len(chunks))
	default:
		fmt.Fprintf(os.Stderr, "attacker: unknown attack %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Printf("DENIED %s: %v\n", os.Args[1], err)
		return
	}
	fmt.Printf("ALLOWED %s\n", os.Args[1])
}

func create(path string, mode uint32) error {
	return os.WriteFile(path, []byte("#!/bin/sh\nid\n"), os.FileMode(mode))
}

// cloneFlags calls clone(2) itself, as a C agent would; a child that is
// made exits at once without touching the Go runtime.
func cloneFlags(flags uintptr) error {
	pid, _, errno := syscall.RawSyscall6(unix.SYS_CLONE, flags|uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
	return reap(pid, errno)
}

// reap ends the child a raw clone made (at once, in the child) and waits
// for it in the parent.
func reap(pid uintptr, errno syscall.Errno) error {
	if errno != 0 {
		return errno
	}
	if pid == 0 {
		syscall.RawSyscall(unix.SYS_EXIT, 0, 0, 0)
	}
	var ws unix.WaitStatus
	unix.Wait4(int(pid), &ws, 0, nil)
	return nil
}

// cloneArgs is struct clone_args (CLONE_ARGS_SIZE_VER0 is its first 64
// bytes).
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls uint64
}

func clone3(flags uint64) error {
	args := cloneArgs{flags: flags, exitSignal: uint64(unix.SIGCHLD)}
	pid, _, errno := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args), 0)
	return reap(pid, errno)
}
