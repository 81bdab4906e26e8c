package nvproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
)

// DriverLatest is the driver version that boots nvproxy with no GPU and no
// driver on the host (its newest ABI): a smoke test's setting.
const DriverLatest = "latest"

var versionRE = regexp.MustCompile(`\b([0-9]{3}\.[0-9]{1,3}(\.[0-9]{1,3})?)\b`)

// HostDriverVersion reads the loaded NVIDIA kernel driver's version from
// sysRoot (/sys) or procRoot (/proc); "" with no error when no driver is
// loaded.
func HostDriverVersion(sysRoot, procRoot string) (string, error) {
	data, err := os.ReadFile(sysRoot + "/module/nvidia/version")
	if err == nil {
		return strings.TrimSpace(string(data)), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("NVIDIA driver version: %w", err)
	}
	data, err = os.ReadFile(procRoot + "/driver/nvidia/version")
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("NVIDIA driver version: %w", err)
	}
	if m := versionRE.FindStringSubmatch(string(data)); m != nil {
		return m[1], nil
	}
	return "", fmt.Errorf("NVIDIA driver version: no version in %s/driver/nvidia/version", procRoot)
}

// SupportedDrivers asks runsc which driver versions its nvproxy supports.
func SupportedDrivers(ctx context.Context, runsc string) ([]string, error) {
	out, err := exec.CommandContext(ctx, runsc, "nvproxy", "list-supported-drivers").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("runsc nvproxy list-supported-drivers: %w", err)
	}
	var vs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v := strings.TrimSpace(sc.Text()); v != "" {
			vs = append(vs, v)
		}
	}
	return vs, nil
}

// DriverCheck is what decides the driver flags.
type DriverCheck struct {
	// Version is the host's driver version, or DriverLatest; empty: no
	// driver found.
	Version string
	// Supported is runsc's list.
	Supported []string
	// AllowUnsupported is the policy's allow_unsupported_driver.
	AllowUnsupported bool
}

// Flags returns the runsc flags the driver needs, or an error, before any
// sandbox starts, naming the supported versions.
func (d DriverCheck) Flags() (flags, warnings []string, err error) {
	switch {
	case d.Version == DriverLatest:
		return []string{"--nvproxy-driver-version=" + DriverLatest}, nil, nil
	case d.Version == "":
		return nil, nil, errors.New("no NVIDIA driver is loaded on this host (no /sys/module/nvidia/version): GPU policies need one; set [gpu] driver_version = \"latest\" in the runtime configuration only to boot without a GPU")
	case slices.Contains(d.Supported, d.Version):
		return []string{"--nvproxy-driver-version=" + d.Version}, nil, nil
	case d.AllowUnsupported:
		return []string{"--nvproxy-allow-unsupported-driver"}, []string{fmt.Sprintf("NVIDIA driver %s is not one this runsc supports; starting anyway because the policy sets allow_unsupported_driver", d.Version)}, nil
	}
	return nil, nil, fmt.Errorf("NVIDIA driver %s is not supported by this runsc's nvproxy; supported: %s (or set allow_unsupported_driver: true in the policy's gpu section, at your own risk)", d.Version, strings.Join(d.Supported, ", "))
}
