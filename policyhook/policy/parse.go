package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds what Parse reads; a policy is a page of YAML.
const MaxFileSize = 1 << 20

// Load reads and validates the policy file at path.
func Load(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policy %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse reads and validates a policy. file names it in messages. The error,
// when not nil, is an ErrorList holding every problem found.
func Parse(file string, data []byte) (*Policy, error) {
	s := &errSink{file: file}
	if len(data) > MaxFileSize {
		s.addAt(Pos{1, 1}, "", "policy is larger than %d bytes", MaxFileSize)
		return nil, s.err()
	}
	root, err := parseYAML(data)
	if err != nil {
		s.addAt(yamlErrorPos(err), "", "%s", yamlErrorMsg(err))
		return nil, s.err()
	}
	if root == nil {
		s.addAt(Pos{1, 1}, "", "policy is empty")
		return nil, s.err()
	}
	if root.Kind != yaml.MappingNode {
		s.addAt(posOf(root), "", "a policy must be a mapping, not %s", describe(root))
		return nil, s.err()
	}

	d := newDecoder(s)
	var p *Policy
	switch format := detect(root, s); format {
	case FormatSeed:
		var f seedFile
		if d.decode(root, "", reflectValue(&f)); d.incomplete {
			return nil, s.err()
		}
		p = fromSeed(&f, s)
	case FormatOpenShellV1:
		var f osFile
		if d.decode(root, "", reflectValue(&f)); d.incomplete {
			return nil, s.err()
		}
		p = fromOpenShell(&f, s)
	default:
		return nil, s.err()
	}
	validate(p, s)
	if err := s.err(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	p.File = file
	p.Hash = hex.EncodeToString(sum[:])
	p.Warnings = s.warns.sorted().capped()
	p.pos = s.pos
	return p, nil
}

// parseYAML returns the single document's root node, or nil for an empty file.
func parseYAML(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &yamlPosError{pos: posOf(&extra), msg: "a policy file holds one YAML document, this one has more"}
	} else if !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

type yamlPosError struct {
	pos Pos
	msg string
}

func (e *yamlPosError) Error() string { return e.msg }

var yamlLineRE = regexp.MustCompile(`^yaml: (?:line (\d+): )?`)

func yamlErrorPos(err error) Pos {
	var pe *yamlPosError
	if errors.As(err, &pe) {
		return pe.pos
	}
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil && m[1] != "" {
		line, _ := strconv.Atoi(m[1])
		return Pos{Line: line, Column: 1}
	}
	return Pos{Line: 1, Column: 1}
}

func yamlErrorMsg(err error) string {
	var pe *yamlPosError
	if errors.As(err, &pe) {
		return pe.msg
	}
	return "invalid YAML: " + yamlLineRE.ReplaceAllString(err.Error(), "")
}

// detect reads the version field, which decides the format.
func detect(root *yaml.Node, s *errSink) Format {
	const want = `want "1.0" (openshell format) or 1 (NVIDIA OpenShell v1 format)`
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "version" {
			continue
		}
		v := root.Content[i+1]
		switch {
		case v.Kind == yaml.AliasNode || v.Anchor != "":
			s.addAt(posOf(v), "version", "%s", noAliases)
			return ""
		case v.Kind == yaml.ScalarNode && v.Tag == "!!str" && v.Value == "1.0",
			v.Kind == yaml.ScalarNode && v.Tag == "!!float" && v.Value == "1.0":
			return FormatSeed
		case v.Kind == yaml.ScalarNode && v.Tag == "!!int" && v.Value == "1":
			return FormatOpenShellV1
		}
		s.addAt(posOf(v), "version", "unsupported policy version %s; %s", describe(v), want)
		return ""
	}
	s.addAt(posOf(root), "version", "is required; %s", want)
	return ""
}
