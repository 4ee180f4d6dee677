// podnet is the pod network of gpufleet's offline kind node image: one small agent per node (a hostNetwork
// DaemonSet, /kind/manifests/default-cni.yaml) that
//
//   - writes the node's CNI config: the ptp plugin (one veth and a /32 route per pod) with host-local
//     addresses from the node's spec.podCIDR, plus portmap for hostPorts;
//   - routes every other node's pod CIDR through that node's InternalIP (all nodes share kind's docker network);
//   - masquerades traffic from pods to anything outside the cluster's pod subnet.
//
// It reads nodes with plain HTTPS GETs (its ServiceAccount's token), every few seconds: no client library, no
// watch. The CNI and iptables binaries are Debian's; `ip` and `iptables` come from its image.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const (
	serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"
	confName       = "10-podnet.conflist"
	every          = 5 * time.Second
)

type node struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR string `json:"podCIDR"`
	} `json:"spec"`
	Status struct {
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

func (n node) internalIP() string {
	for _, a := range n.Status.Addresses {
		if a.Type == "InternalIP" && net.ParseIP(a.Address).To4() != nil {
			return a.Address
		}
	}
	return ""
}

func main() {
	me := os.Getenv("NODE_NAME")
	subnet := os.Getenv("POD_SUBNET")
	confDir := envOr("CNI_CONF_DIR", "/etc/cni/net.d")
	if me == "" || subnet == "" {
		log.Fatal("podnet: NODE_NAME and POD_SUBNET must be set")
	}
	api, err := newAPI()
	if err != nil {
		log.Fatalf("podnet: %v", err)
	}
	routes := map[string]string{} // pod CIDR -> gateway, as last set by us
	masquerading := false
	for ; ; time.Sleep(every) {
		nodes, err := api.nodes()
		if err != nil {
			log.Printf("podnet: listing nodes: %v", err)
			continue
		}
		for _, n := range nodes {
			if n.Metadata.Name == me && n.Spec.PodCIDR != "" {
				if changed, err := writeConf(confDir, n.Spec.PodCIDR); err != nil {
					log.Printf("podnet: CNI config: %v", err)
				} else if changed {
					log.Printf("podnet: CNI config written for pod CIDR %s", n.Spec.PodCIDR)
				}
			}
		}
		routes = syncRoutes(me, nodes, routes)
		if !masquerading {
			masquerading = ensureMasquerade(subnet)
		}
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

type apiClient struct {
	base   string
	client *http.Client
}

func newAPI() (*apiClient, error) {
	// kind sets CONTROL_PLANE_ENDPOINT (host:port) on the first container of this manifest's DaemonSet: the
	// API server without going through a Service, which needs kube-proxy, which may not run yet.
	endpoint := os.Getenv("CONTROL_PLANE_ENDPOINT")
	if endpoint == "" {
		endpoint = net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	}
	ca, err := os.ReadFile(filepath.Join(serviceAccount, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s/ca.crt", serviceAccount)
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	return &apiClient{base: "https://" + endpoint, client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}, nil
}

func (a *apiClient) nodes() ([]node, error) {
	// Read at every call: the kubelet rotates projected tokens.
	token, err := os.ReadFile(filepath.Join(serviceAccount, "token"))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodGet, a.base+"/api/v1/nodes", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v1/nodes: %s", resp.Status)
	}
	var list struct {
		Items []node `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	return list.Items, nil
}

func writeConf(dir, podCIDR string) (bool, error) {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "podnet",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": false, // done once for the node below, not per pod
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	body, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return false, err
	}
	path := filepath.Join(dir, confName)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, body) {
		return false, nil
	}
	// Atomically: containerd watches the directory and must never read half a file.
	tmp := filepath.Join(dir, "."+confName+".tmp")
	if err := os.WriteFile(tmp, body, 0o644); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, path)
}

func syncRoutes(me string, nodes []node, had map[string]string) map[string]string {
	want := map[string]string{}
	for _, n := range nodes {
		if n.Metadata.Name != me && n.Spec.PodCIDR != "" && n.internalIP() != "" {
			want[n.Spec.PodCIDR] = n.internalIP()
		}
	}
	cidrs := make([]string, 0, len(want))
	for c := range want {
		cidrs = append(cidrs, c)
	}
	sort.Strings(cidrs)
	now := map[string]string{}
	for _, cidr := range cidrs {
		gw := want[cidr]
		if had[cidr] == gw {
			now[cidr] = gw
			continue
		}
		if err := run("ip", "route", "replace", cidr, "via", gw); err != nil {
			log.Printf("podnet: route %s via %s: %v", cidr, gw, err)
			continue
		}
		log.Printf("podnet: route %s via %s", cidr, gw)
		now[cidr] = gw
	}
	for cidr, gw := range had {
		if _, ok := want[cidr]; !ok {
			if err := run("ip", "route", "del", cidr, "via", gw); err != nil {
				log.Printf("podnet: removing route %s: %v", cidr, err)
			}
		}
	}
	return now
}

func ensureMasquerade(subnet string) bool {
	rule := []string{"-s", subnet, "!", "-d", subnet, "-m", "comment", "--comment", "podnet: pods to outside the cluster", "-j", "MASQUERADE"}
	if run("iptables", append([]string{"-t", "nat", "-C", "POSTROUTING"}, rule...)...) == nil {
		return true
	}
	if err := run("iptables", append([]string{"-t", "nat", "-A", "POSTROUTING"}, rule...)...); err != nil {
		log.Printf("podnet: masquerade rule: %v", err)
		return false
	}
	log.Printf("podnet: masquerading %s to outside the cluster", subnet)
	return true
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
