package modifier

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const cpuPeriod = 100_000 // µs, the CFS default

type resources struct {
	memoryBytes int64
	cpuQuota    int64
}

var _ SpecModifier = (*resources)(nil)

// NewResources bounds the sandbox's memory and CPU through its cgroup. On
// a memory overrun the host kills the whole sandbox, not one process in it.
// It returns nil when the policy sets neither.
func NewResources(memoryMB int64, cpuCores float64) SpecModifier {
	if memoryMB <= 0 && cpuCores <= 0 {
		return nil
	}
	return &resources{memoryBytes: memoryMB << 20, cpuQuota: int64(cpuCores * cpuPeriod)}
}

func (r *resources) Modify(s *specs.Spec) error {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	res := s.Linux.Resources
	if r.memoryBytes > 0 {
		if res.Memory == nil {
			res.Memory = &specs.LinuxMemory{}
		}
		limit := r.memoryBytes
		if res.Memory.Limit != nil && *res.Memory.Limit > 0 && *res.Memory.Limit < limit {
			limit = *res.Memory.Limit // the engine asked for less
		}
		res.Memory.Limit = &limit
		swap := limit // memory+swap == memory: no swap
		res.Memory.Swap = &swap
	}
	if r.cpuQuota > 0 {
		if res.CPU == nil {
			res.CPU = &specs.LinuxCPU{}
		}
		quota, period := r.cpuQuota, uint64(cpuPeriod)
		if res.CPU.Quota != nil && res.CPU.Period != nil && *res.CPU.Period > 0 && *res.CPU.Quota > 0 &&
			float64(*res.CPU.Quota)/float64(*res.CPU.Period) < float64(quota)/float64(period) {
			return nil // the engine asked for less
		}
		res.CPU.Quota, res.CPU.Period = &quota, &period
	}
	return nil
}
