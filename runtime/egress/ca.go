package egress

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A sandbox's CA signs the certificates the gateway presents where it
// terminates the sandbox's TLS (endpoints with HTTP rules). It is made
// per sandbox at create: its key lives in a root-only file in the
// sandbox's state directory, which the gateway's keeper hands to the
// serving process as a descriptor, and is gone with the sandbox. Only
// its certificate enters the sandbox, in the trust bundle.

// caValidity is how long a sandbox's CA is valid: longer than any
// sandbox is expected to live; it dies with the sandbox's state anyway.
const caValidity = 2 * 365 * 24 * time.Hour

// leafValidity is how long a certificate the gateway issues is valid.
// It is issued again when it has less than a quarter of this left.
const leafValidity = 7 * 24 * time.Hour

// maxLeaves bounds the certificates kept: one per name the policy let
// the sandbox reach, so a sandbox cannot grow the table past it.
const maxLeaves = 1024

// WriteCAFile makes a new CA for sandbox and writes its certificate and
// key, PEM, to path (mode 0600, which must not exist yet). It returns
// the certificate's PEM.
func WriteCAFile(path, sandbox string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"openshell"}, CommonName: "openshell sandbox " + sandbox},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// It can vouch for servers only, never sign code or clients.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	_, werr := f.Write(append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})...))
	if err := errors.Join(werr, f.Close()); err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	return certPEM, nil
}

// CA issues the gateway's certificates for one sandbox.
type CA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	leafKey *ecdsa.PrivateKey // one key for every certificate it issues

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

// readHeld reads a file the gateway was given: "/proc/self/fd/N" is read
// from descriptor N as inherited, without opening it again (the serving
// process may not open the file by any name: it is root's, and outside
// what Landlock lets it reach); any other path is read by name.
func readHeld(path string) ([]byte, error) {
	var fd int
	if _, err := fmt.Sscanf(path, "/proc/self/fd/%d", &fd); err != nil || fmt.Sprintf("/proc/self/fd/%d", fd) != path {
		return os.ReadFile(path)
	}
	var out []byte
	buf := make([]byte, 64<<10)
	for off := int64(0); ; {
		n, err := unix.Pread(fd, buf, off)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
		off += int64(n)
		if len(out) > 16<<20 {
			return nil, fmt.Errorf("read %s: larger than 16 MiB", path)
		}
	}
}

// LoadCA reads a CA written by WriteCAFile.
func LoadCA(path string) (*CA, error) {
	data, err := readHeld(path)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	pair, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA %s: %w", path, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || pair.Leaf == nil || !pair.Leaf.IsCA {
		return nil, fmt.Errorf("sandbox CA %s: not a CA certificate and key", path)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	return &CA{cert: pair.Leaf, key: signer, leafKey: leafKey, leaves: map[string]*tls.Certificate{}}, nil
}

// Certificate returns a certificate for name (a host name or an IP
// address) signed by the CA, issued once and kept while it is fresh.
func (ca *CA) Certificate(name string) (*tls.Certificate, error) {
	now := time.Now()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c, ok := ca.leaves[name]; ok && c.Leaf.NotAfter.Sub(now) > leafValidity/4 {
		return c, nil
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue a certificate for %q: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: ca.leafKey, Leaf: leaf}
	if len(ca.leaves) >= maxLeaves {
		clear(ca.leaves)
	}
	ca.leaves[name] = c
	return c, nil
}
