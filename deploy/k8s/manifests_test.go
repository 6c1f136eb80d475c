// Checks the Kubernetes manifests offline: every document decodes strictly into its
// k8s.io/api type (an unknown or misspelt field fails), selectors select their pods,
// Services reach a named container port, probes ask /readyz and /healthz on it, the edges
// are reachable without session affinity and drain before SIGTERM, disruption budgets
// cover a workload, and every STOREPULSE_* variable set is one storepulse reads.
// Run by scripts/test: `go test ./...` in deploy/k8s.
package k8s

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

type manifests struct {
	configMaps   []corev1.ConfigMap
	services     []corev1.Service
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	budgets      []policyv1.PodDisruptionBudget
}

// workload is what the checks need of a Deployment or a StatefulSet.
type workload struct {
	name     string
	selector *metav1.LabelSelector
	template corev1.PodTemplateSpec
}

func (m *manifests) workloads() []workload {
	var all []workload
	for _, d := range m.deployments {
		all = append(all, workload{d.Name, d.Spec.Selector, d.Spec.Template})
	}
	for _, s := range m.statefulSets {
		all = append(all, workload{s.Name, s.Spec.Selector, s.Spec.Template})
	}
	return all
}

func strict(t *testing.T, file string, doc []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func load(t *testing.T) *manifests {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	m := &manifests{}
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range bytes.Split(text, []byte("\n---\n")) {
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			switch meta.Kind {
			case "ConfigMap":
				var o corev1.ConfigMap
				strict(t, file, doc, &o)
				m.configMaps = append(m.configMaps, o)
			case "Service":
				var o corev1.Service
				strict(t, file, doc, &o)
				m.services = append(m.services, o)
			case "Deployment":
				var o appsv1.Deployment
				strict(t, file, doc, &o)
				m.deployments = append(m.deployments, o)
			case "StatefulSet":
				var o appsv1.StatefulSet
				strict(t, file, doc, &o)
				m.statefulSets = append(m.statefulSets, o)
			case "PodDisruptionBudget":
				var o policyv1.PodDisruptionBudget
				strict(t, file, doc, &o)
				m.budgets = append(m.budgets, o)
			default:
				t.Fatalf("%s: unexpected kind %q", file, meta.Kind)
			}
		}
	}
	return m
}

// knownVariables reads the STOREPULSE_* names storepulse accepts from src/config.rs.
func knownVariables(t *testing.T) map[string]bool {
	t.Helper()
	text, err := os.ReadFile("../../src/config.rs")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, name := range regexp.MustCompile(`"(STOREPULSE_[A-Z0-9_]+)"`).FindAllStringSubmatch(string(text), -1) {
		known[name[1]] = true
	}
	if len(known) < 20 {
		t.Fatalf("read only %d variables from src/config.rs", len(known))
	}
	return known
}

func TestWorkloadsSelectTheirPodsAndProbeTheirPorts(t *testing.T) {
	m := load(t)
	if len(m.workloads()) != 2 {
		t.Fatalf("expected the aggregators and the edges, got %d workloads", len(m.workloads()))
	}
	for _, w := range m.workloads() {
		selector, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || selector.Empty() {
			t.Fatalf("%s: selector %v: %v", w.name, w.selector, err)
		}
		if !selector.Matches(labels.Set(w.template.Labels)) {
			t.Errorf("%s: the selector does not select the template's pods", w.name)
		}
		if len(w.template.Spec.Containers) != 1 {
			t.Fatalf("%s: one container expected", w.name)
		}
		c := w.template.Spec.Containers[0]
		role := strings.Join(c.Args, " ")
		if role != "aggregator" && role != "edge" {
			t.Errorf("%s: args %q: a cluster runs `storepulse aggregator` or `storepulse edge`", w.name, role)
		}
		if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 8080 {
			t.Errorf("%s: one port named http on 8080 expected, got %v", w.name, c.Ports)
		}
		for probe, path := range map[*corev1.Probe]string{c.ReadinessProbe: "/readyz", c.LivenessProbe: "/healthz"} {
			if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.String() != "http" {
				t.Errorf("%s: a probe of %s on port http expected, got %+v", w.name, path, probe)
			}
		}
		if role == "edge" && (c.Lifecycle == nil || c.Lifecycle.PreStop == nil) {
			t.Errorf("%s: an edge leaves its Service before SIGTERM (preStop)", w.name)
		}
		if w.template.Spec.TerminationGracePeriodSeconds == nil || *w.template.Spec.TerminationGracePeriodSeconds < 20 {
			t.Errorf("%s: the grace period must cover the final checkpoints (15 s) and the preStop", w.name)
		}
	}
}

func TestServicesAndBudgetsReachAWorkload(t *testing.T) {
	m := load(t)
	selecting := func(set map[string]string) []workload {
		var found []workload
		for _, w := range m.workloads() {
			if len(set) > 0 && labels.SelectorFromSet(set).Matches(labels.Set(w.template.Labels)) {
				found = append(found, w)
			}
		}
		return found
	}
	for _, s := range m.services {
		found := selecting(s.Spec.Selector)
		if len(found) != 1 {
			t.Fatalf("service %s selects %d workloads", s.Name, len(found))
		}
		for _, port := range s.Spec.Ports {
			if port.TargetPort.String() != found[0].template.Spec.Containers[0].Ports[0].Name {
				t.Errorf("service %s: targetPort %s is not the container's named port", s.Name, port.TargetPort.String())
			}
		}
		role := strings.Join(found[0].template.Spec.Containers[0].Args, " ")
		if role == "edge" && s.Spec.SessionAffinity != corev1.ServiceAffinityNone {
			t.Errorf("service %s: any edge resumes any id, so no session affinity", s.Name)
		}
	}
	for _, set := range m.statefulSets {
		headless := false
		for _, s := range m.services {
			headless = headless || (s.Name == set.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone)
		}
		if !headless {
			t.Errorf("statefulset %s: its serviceName %q is not a headless Service here", set.Name, set.Spec.ServiceName)
		}
	}
	if len(m.budgets) != 2 {
		t.Fatalf("a disruption budget for each workload expected, got %d", len(m.budgets))
	}
	for _, b := range m.budgets {
		if len(selecting(b.Spec.Selector.MatchLabels)) != 1 {
			t.Errorf("budget %s does not cover exactly one workload", b.Name)
		}
	}
}

func TestEveryVariableSetIsOneStorepulseReads(t *testing.T) {
	m := load(t)
	known := knownVariables(t)
	names := map[string]bool{}
	for _, c := range m.configMaps {
		for key := range c.Data {
			if !known[key] {
				t.Errorf("configmap %s sets %s, which storepulse does not read (a typo is an error at start)", c.Name, key)
			}
			names[c.Name] = true
		}
	}
	for _, w := range m.workloads() {
		for _, e := range w.template.Spec.Containers[0].Env {
			if !known[e.Name] {
				t.Errorf("%s sets %s, which storepulse does not read (a typo is an error at start)", w.name, e.Name)
			}
		}
		for _, from := range w.template.Spec.Containers[0].EnvFrom {
			if from.ConfigMapRef != nil && !names[from.ConfigMapRef.Name] {
				t.Errorf("%s: configmap %s is not in the manifests", w.name, from.ConfigMapRef.Name)
			}
		}
	}
}
