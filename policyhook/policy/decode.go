package policy

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxNodes bounds the work of one decode; a policy never needs this many.
// (Aliases, which could make a small file expand into a huge tree, are
// refused and never followed.)
const maxNodes = 100_000

// Bounds on what one policy may list, so that validating, compiling and
// matching it stays fast (all of it is linear in these) and a hostile
// policy cannot make a runtime hook or a gateway slow. Each is far above
// any real policy; docs/policy.md lists them.
const (
	// MaxPaths bounds each filesystem list and all of them together.
	MaxPaths = 4096
	// MaxEgressRules bounds the egress rules (one host each): each of
	// allowed_egress, an OpenShell policy's endpoints, and its
	// network_policies, and all rules together.
	MaxEgressRules = 4096
	// MaxPorts bounds the ports of one rule.
	MaxPorts = 1024
	// MaxSyscalls bounds allowed_syscalls.
	MaxSyscalls = 1024
	// MaxListItems bounds every other list and mapping (allowed_ips,
	// rules, binaries, environment, GPU devices).
	MaxListItems = 1024
)

// listBounds gives the bound of a list or mapping by its key.
var listBounds = map[string]int{
	"system_paths":     MaxPaths,
	"allowed_reads":    MaxPaths,
	"allowed_writes":   MaxPaths,
	"read_only":        MaxPaths,
	"read_write":       MaxPaths,
	"allowed_egress":   MaxEgressRules,
	"endpoints":        MaxEgressRules,
	"network_policies": MaxEgressRules,
	"ports":            MaxPorts,
	"allowed_syscalls": MaxSyscalls,
}

func boundOf(field string) int {
	if b, ok := listBounds[field[strings.LastIndexByte(field, '.')+1:]]; ok {
		return b
	}
	return MaxListItems
}

// tooMany reports, once, a list or mapping n with more than its bound of
// entries; its entries are then not looked at.
func (d *decoder) tooMany(n *yaml.Node, field string, entries int) bool {
	if bound := boundOf(field); entries > bound {
		d.sink.addAt(posOf(n), field, "has %d entries; at most %d are allowed", entries, bound)
		d.incomplete = true
		return true
	}
	return false
}

const noAliases = "YAML anchors, aliases and merge keys are not allowed in a policy; write the value out"

// refuseAliases reports an anchor or alias at n. Aliases are never
// followed, so an error behind one is reported once, and a small file
// cannot expand into a huge tree ("billion laughs").
func (d *decoder) refuseAliases(n *yaml.Node, field string) bool {
	switch {
	case n.Kind == yaml.AliasNode:
		d.sink.addAt(posOf(n), field, "is an alias (*%s): %s", n.Value, noAliases)
	case n.Anchor != "":
		d.sink.addAt(posOf(n), field, "has an anchor (&%s): %s", n.Anchor, noAliases)
	default:
		return false
	}
	d.incomplete = true
	return true
}

// badKey reports a mapping key that is an alias, a merge key ("<<",
// which would otherwise become a field or a policy named "<<") or not a
// scalar.
func (d *decoder) badKey(k *yaml.Node, field string) bool {
	switch {
	case k.Kind == yaml.AliasNode || k.Anchor != "":
		return d.refuseAliases(k, field)
	case k.Kind == yaml.ScalarNode && k.Tag == "!!merge":
		d.sink.addAt(posOf(k), field, "is a merge key (<<): %s", noAliases)
		d.incomplete = true
		return true
	case k.Kind != yaml.ScalarNode:
		d.wrongType(k, field, "a plain key")
		return true
	}
	return false
}

// Unsupported marks a field that other tools' policies use and that openshell
// recognises but cannot enforce. Its struct tag `unsupported:"why"` is the
// message: such a field is an error, never silently dropped.
type Unsupported struct{ Set bool }

var unsupportedType = reflect.TypeFor[Unsupported]()

// decoder turns a yaml.Node tree into tagged Go structs, strictly: unknown
// fields, wrong types and duplicate keys are errors. It records where every
// field sits, so validation can point at the file, line and column later.
// yaml.v3's own Decode stops at the first type error and knows no field
// paths, which is why this walker exists.
type decoder struct {
	sink  *errSink
	nodes int
	// incomplete is set when an anchor, alias, merge key or a list over
	// its bound was refused: what it stood for is missing, so validating
	// the rest would only report that again.
	incomplete bool
}

func newDecoder(sink *errSink) *decoder {
	if sink.pos == nil {
		sink.pos = map[string]Pos{}
	}
	return &decoder{sink: sink}
}

func posOf(n *yaml.Node) Pos { return Pos{Line: n.Line, Column: n.Column} }

func join(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// decode fills the settable value v from n. field is n's path.
func (d *decoder) decode(n *yaml.Node, field string, v reflect.Value) {
	d.nodes++
	if d.nodes > maxNodes {
		if d.nodes == maxNodes+1 {
			d.sink.addAt(posOf(n), field, "policy is too large (more than %d YAML nodes after expanding aliases)", maxNodes)
		}
		return
	}
	d.sink.pos[field] = posOf(n)
	if d.refuseAliases(n, field) {
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the field at its default
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, field, v.Elem())
	case reflect.Struct:
		d.decodeStruct(n, field, v)
	case reflect.Slice:
		d.decodeSlice(n, field, v)
	case reflect.Map:
		d.decodeMap(n, field, v)
	default:
		d.decodeScalar(n, field, v)
	}
}

func (d *decoder) wrongType(n *yaml.Node, field, want string) {
	d.sink.addAt(posOf(n), field, "must be %s, not %s", want, describe(n))
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	switch n.Tag {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int":
		return "the integer " + n.Value
	case "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	}
	return fmt.Sprintf("%q", n.Value)
}

type structField struct {
	index       int
	unsupported string
}

func fieldsOf(t reflect.Type) (map[string]structField, []string) {
	fields := map[string]structField{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = structField{index: i, unsupported: f.Tag.Get("unsupported")}
		names = append(names, name)
	}
	return fields, names
}

// scalarStruct is a struct that may also be written as a scalar: the
// scalar then fills the field scalarField names (its yaml key), as if
// written {key: scalar}, and is placed under <field>.<key>. (NVIDIA
// OpenShell lists binaries as `- /usr/bin/curl` or `- {path: ...}`.)
type scalarStruct interface{ scalarField() string }

var scalarStructType = reflect.TypeFor[scalarStruct]()

func (d *decoder) decodeStruct(n *yaml.Node, field string, v reflect.Value) {
	if v.Type().Implements(scalarStructType) {
		key := v.Interface().(scalarStruct).scalarField()
		if n.Kind == yaml.ScalarNode {
			fields, _ := fieldsOf(v.Type())
			d.decode(n, join(field, key), v.Field(fields[key].index))
			return
		}
		if n.Kind != yaml.MappingNode {
			d.wrongType(n, field, "a mapping or a string ("+key+")")
			return
		}
	}
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, field, "a mapping")
		return
	}
	fields, names := fieldsOf(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		kf := join(field, key)
		if d.badKey(k, kf) {
			continue
		}
		if seen[key] {
			d.sink.addAt(posOf(k), kf, "appears more than once")
			continue
		}
		seen[key] = true
		sf, ok := fields[key]
		if !ok {
			d.sink.addAt(posOf(k), kf, "unknown field (known fields here: %s)", strings.Join(names, ", "))
			continue
		}
		fv := v.Field(sf.index)
		if fv.Type() == unsupportedType {
			d.sink.pos[kf] = posOf(k)
			msg := sf.unsupported
			if m, ok := unsupportedMessages[msg]; ok {
				msg = m
			}
			d.sink.addAt(posOf(k), kf, "not supported: %s", msg)
			fv.Set(reflect.ValueOf(Unsupported{Set: true}))
			continue
		}
		d.decode(val, kf, fv)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, field string, v reflect.Value) {
	if n.Kind != yaml.SequenceNode {
		d.wrongType(n, field, "a list")
		return
	}
	if d.tooMany(n, field, len(n.Content)) {
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, fmt.Sprintf("%s[%d]", field, i), s.Index(i))
	}
	v.Set(s)
}

func (d *decoder) decodeMap(n *yaml.Node, field string, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, field, "a mapping")
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		panic("policy: decoder supports only string-keyed maps")
	}
	if d.tooMany(n, field, len(n.Content)/2) {
		return
	}
	m := reflect.MakeMap(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kf := join(field, k.Value)
		if d.badKey(k, kf) {
			continue
		}
		if hasControl(k.Value) {
			d.sink.addAt(posOf(k), kf, "the key %q contains a control character", k.Value)
			continue
		}
		if seen[k.Value] {
			d.sink.addAt(posOf(k), kf, "appears more than once")
			continue
		}
		seen[k.Value] = true
		ev := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, kf, ev)
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), ev)
	}
	v.Set(m)
}

func (d *decoder) decodeScalar(n *yaml.Node, field string, v reflect.Value) {
	if n.Kind != yaml.ScalarNode {
		d.wrongType(n, field, "a "+scalarName(v.Kind()))
		return
	}
	switch v.Kind() {
	case reflect.String:
		// Numbers are fine as strings (a uid, a port-less host), so that
		// `run_as_user: 1000` works; booleans and the like are not.
		if n.Tag != "!!str" && n.Tag != "!!int" {
			d.wrongType(n, field, "a string")
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Tag != "!!bool" {
			d.wrongType(n, field, "true or false")
			return
		}
		v.SetBool(n.Value == "true" || n.Value == "True" || n.Value == "TRUE")
	case reflect.Int, reflect.Int64, reflect.Int32:
		if n.Tag != "!!int" {
			d.wrongType(n, field, "an integer")
			return
		}
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil || v.OverflowInt(i) {
			d.sink.addAt(posOf(n), field, "%s is out of range", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		if n.Tag != "!!int" && n.Tag != "!!float" {
			d.wrongType(n, field, "a number")
			return
		}
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.sink.addAt(posOf(n), field, "%s is not a finite number", n.Value)
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("policy: decoder does not support %s", v.Type()))
	}
}

func scalarName(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Float64:
		return "number"
	}
	return "integer"
}

// sortedKeys gives a map's keys in a stable order, so errors and compiled
// output do not depend on Go's map iteration.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func reflectValue(ptr any) reflect.Value { return reflect.ValueOf(ptr).Elem() }
