import BackupStorage
import Foundation

/// The S3 bucket lifecycle rule for a tier: what the bucket can do on its own without knowing our
/// snapshot rules. It aborts multipart uploads left open for a day, and expires `backups/` objects
/// only when the tier has no snapshot rules (S3 would otherwise delete what a snapshot keeps).
///
/// It moves nothing to GLACIER: a prefix rule would take the manifests too, and a backup whose
/// manifest is archived can be neither listed nor chosen nor pruned by its age (an outside attack
/// found every listing failing on one). `dbprune` moves each kept backup's data files itself after
/// `glacier_after`, leaving its manifest readable; a size filter that would spare the manifests is
/// not kept by every S3-compatible server (moto drops it).
public enum LifecycleRule {
    /// The rule's id, one per repository prefix, so other rules in the bucket are left alone.
    public static func ruleID(prefix: String) -> String { "dbrecovery-" + (prefix.isEmpty ? "root" : prefix.replacingOccurrences(of: "/", with: "-")) }

    /// After how many days our rule has S3 expire `backups/` objects for a tier (only one without
    /// snapshot rules or a count to keep); nil when it expires nothing. Only `backups/`: the rule never
    /// touches `wal/` or `locks/`, so WAL is neither expired nor moved to GLACIER by the bucket.
    static func expirationDays(tier: RetentionPolicy.Tier) -> Int? {
        guard !tier.snapshots, tier.keepLast == 0, let within = tier.keepWithin else { return nil }
        return max(1, within.hours / 24)
    }

    /// Our `<Rule>` element for a prefix and tier.
    public static func rule(prefix: String, tier: RetentionPolicy.Tier) -> String {
        let backups = prefix.isEmpty ? "backups/" : "\(prefix)/backups/"
        var xml = "<Rule><ID>\(ruleID(prefix: prefix))</ID><Filter><Prefix>\(escape(backups))</Prefix></Filter><Status>Enabled</Status>"
        if let days = expirationDays(tier: tier) {
            xml += "<Expiration><Days>\(days)</Days></Expiration>"
        }
        xml += "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule>"
        return xml
    }

    /// The bucket configuration with our rule replaced or added and every other rule kept.
    public static func merged(current: String?, prefix: String, tier: RetentionPolicy.Tier) -> String {
        let ours = rule(prefix: prefix, tier: tier)
        let others = (current.map(rules(in:)) ?? []).filter { !$0.contains("<ID>\(ruleID(prefix: prefix))</ID>") }
        return "<LifecycleConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">" + (others + [ours]).joined() + "</LifecycleConfiguration>"
    }

    /// The `<Rule>…</Rule>` elements of a configuration, as text.
    static func rules(in xml: String) -> [String] {
        var found: [String] = []
        var rest = Substring(xml)
        while let start = rest.range(of: "<Rule>"), let end = rest.range(of: "</Rule>", range: start.upperBound..<rest.endIndex) {
            found.append(String(rest[start.lowerBound..<end.upperBound]))
            rest = rest[end.upperBound...]
        }
        return found
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// What `dbprune --apply-lifecycle` did or would do.
    public struct Change: Codable, Sendable {
        public var bucketLocation: String
        public var currentRule: String?
        public var newRule: String
        public var changed: Bool
        public var applied: Bool
    }

    /// Shows (and unless `dryRun`, writes) the rule for an S3 repository.
    ///
    /// - Throws: `RecoveryError(.usage)` for a local repository.
    public static func apply(repository: String, policy: RetentionPolicy, dryRun: Bool,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Change {
        guard let store = try Repository.open(repository, create: false, environment: environment) as? S3Store else {
            throw RecoveryError(.usage, "--apply-lifecycle needs an S3 repository; \(repository) is local",
                                hint: "local repositories are pruned by dbprune alone")
        }
        let current = try store.lifecycleConfiguration()
        let currentRule = current.map(rules(in:))?.first { $0.contains("<ID>\(ruleID(prefix: store.prefix))</ID>") }
        let newRule = rule(prefix: store.prefix, tier: policy.s3)
        let changed = currentRule.map { normalized($0) != normalized(newRule) } ?? true
        if changed && !dryRun {
            try store.putLifecycleConfiguration(merged(current: current, prefix: store.prefix, tier: policy.s3))
        }
        return Change(bucketLocation: store.location, currentRule: currentRule, newRule: newRule, changed: changed, applied: changed && !dryRun)
    }

    /// Removes whitespace between tags (servers pretty-print what they return).
    static func normalized(_ xml: String) -> String {
        xml.replacingOccurrences(of: ">\\s+<", with: "><", options: .regularExpression).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
