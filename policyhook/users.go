package policyhook

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// imageUsers resolves names in an image's /etc/passwd and /etc/group.
type imageUsers struct{ root string }

// UsersInRoot looks users and groups up in the image rooted at root. Paths
// are resolved inside root, so a symlink in the image cannot make the
// lookup read a host file.
func UsersInRoot(root string) UserLookup { return imageUsers{root: root} }

func (u imageUsers) LookupUser(name string) (uint32, uint32, error) {
	f, err := u.find("etc/passwd", name)
	if err != nil {
		return 0, 0, err
	}
	if len(f) < 4 {
		return 0, 0, fmt.Errorf("malformed passwd entry for %q", name)
	}
	uid, err1 := strconv.ParseUint(f[2], 10, 32)
	gid, err2 := strconv.ParseUint(f[3], 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("malformed passwd entry for %q", name)
	}
	return uint32(uid), uint32(gid), nil
}

func (u imageUsers) LookupGroup(name string) (uint32, error) {
	f, err := u.find("etc/group", name)
	if err != nil {
		return 0, err
	}
	if len(f) < 3 {
		return 0, fmt.Errorf("malformed group entry for %q", name)
	}
	gid, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("malformed group entry for %q", name)
	}
	return uint32(gid), nil
}

func (u imageUsers) find(file, name string) ([]string, error) {
	p, err := securejoin.SecureJoin(u.root, file)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", file, err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read image's /%s: %w", file, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if fields[0] == name {
			return fields, nil
		}
	}
	return nil, fmt.Errorf("not found in the image's /%s", file)
}
