package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// object is one rendered manifest, decoded strictly into its API type.
type object struct {
	Kind, Name string
	Typed      any // a pointer to the type of typeFor(APIVersion, Kind)
}

func (o object) String() string { return o.Kind + "/" + o.Name }

// typeFor returns a new value of the Go type of apiVersion/kind: the
// k8s.io/api types, and the KEDA types of keda.go. Anything else is an
// error: a manifest of a kind the check does not know is not checked.
func typeFor(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, nil
	case "keda.sh/v1alpha1/ScaledObject":
		return &ScaledObject{}, nil
	case "keda.sh/v1alpha1/TriggerAuthentication":
		return &TriggerAuthentication{}, nil
	}
	return nil, fmt.Errorf("unknown apiVersion/kind %s/%s (add its type to typeFor)", apiVersion, kind)
}

// render builds the kustomization in dir the way `kubectl apply -k`
// does (krusty, default options, files from disk) and decodes every
// object strictly.
func render(dir string) ([]object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []object
	var errs []error
	for _, r := range resMap.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.CurId(), err)
		}
		o, err := decodeStrict(y)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", r.GetKind(), r.GetName(), err))
			continue
		}
		objs = append(objs, o)
	}
	return objs, errors.Join(errs...)
}

// decodeStrict converts one YAML manifest to JSON and decodes it into
// the type its apiVersion and kind name. Unknown fields are errors, and
// so are fields whose case differs from the API's (encoding/json alone
// would accept "httpget" for "httpGet") and duplicate fields.
func decodeStrict(y []byte) (object, error) {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return object{}, fmt.Errorf("YAML: %w", err)
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(j, &head); err != nil {
		return object{}, err
	}
	typed, err := typeFor(head.APIVersion, head.Kind)
	if err != nil {
		return object{}, err
	}
	if err := decodeStrictJSON(j, typed); err != nil {
		return object{}, fmt.Errorf("%s: %w", head.Kind, err)
	}
	return object{Kind: head.Kind, Name: head.Metadata.Name, Typed: typed}, nil
}

// decodeStrictJSON decodes j into v, rejecting unknown fields, fields
// whose case differs from v's and duplicate fields.
func decodeStrictJSON(j []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the object")
	}
	strict, err := sigsjson.UnmarshalStrict(j, v, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}
