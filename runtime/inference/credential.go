package inference

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReadCredential reads the key a source names: a file (opened without
// following a link, a regular file owned by root with no group or other
// permission bits, at most 16 KiB, surrounding space trimmed) or an
// environment variable, through getenv. Errors give the reason and the
// source, never a byte of the key.
func ReadCredential(src string, getenv func(string) string) (string, error) {
	kind, name, err := ParseSource(src)
	if err != nil {
		return "", fmt.Errorf("credential %w", err)
	}
	var key []byte
	switch kind {
	case "env":
		v := getenv(name)
		if v == "" {
			return "", fmt.Errorf("credential %s: the variable is not set in the runtime's environment", src)
		}
		key = []byte(v)
	case "file":
		if key, err = readKeyFile(name); err != nil {
			return "", fmt.Errorf("credential %s: %w", src, err)
		}
	}
	key = bytes.TrimSpace(key)
	switch {
	case len(key) == 0:
		return "", fmt.Errorf("credential %s: is empty", src)
	case !headerSafe(key):
		return "", fmt.Errorf("credential %s: holds a space or a control character: not a key that can go in a header", src)
	}
	return string(key), nil
}

func readKeyFile(name string) ([]byte, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, errors.New("is a symbolic link; name the file itself")
	}
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, errors.New("is not a regular file")
	case st == nil:
		return nil, errors.New("has no owner to check")
	case st.Uid != 0:
		return nil, fmt.Errorf("is owned by uid %d, not root: whoever owns it could change the key or read it", st.Uid)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("has mode %04o: group and others must have no access (chmod 600)", fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyBytes {
		return nil, fmt.Errorf("is larger than %d bytes: not a key", maxKeyBytes)
	}
	return data, nil
}

// headerSafe reports whether key can be sent as a header value as it is.
func headerSafe(key []byte) bool {
	for _, c := range key {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}
