//! The model-vs-KVM differential test.
