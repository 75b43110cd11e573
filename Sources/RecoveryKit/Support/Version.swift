/// The toolkit's version, recorded in manifests and printed by `--version`.
public enum DBRecoveryVersion {
    public static let current = "0.1.0"
}
