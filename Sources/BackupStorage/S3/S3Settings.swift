import Foundation
import Synchronization

/// S3 settings from the environment, the way the AWS CLI reads them: credentials from the chain of
/// `credentialSource` (keys, web identity, profile, container, instance profile); `AWS_REGION` / `AWS_DEFAULT_REGION`;
/// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`. Ours: `DBRECOVERY_S3_PART_SIZE_MB`, `DBRECOVERY_S3_CONCURRENCY`
/// (parts in flight, default 4; memory is about (concurrency + 1) × part size), `DBRECOVERY_S3_MAX_ATTEMPTS`
/// (default 8), `DBRECOVERY_S3_TIMEOUT_SECONDS` (per request, default 60), `DBRECOVERY_S3_LOW_SPEED_LIMIT`
/// (bytes per second a body must keep up, default 1024), `AWS_CA_BUNDLE` (the AWS CLI's CA file),
/// `DBRECOVERY_S3_SSE` (`AES256` or `aws:kms`), `DBRECOVERY_S3_KMS_KEY_ID`.
public enum S3Settings {
    /// Builds the configuration of one bucket.
    ///
    /// - Throws: `StorageError(.invalidLocation)` when no credentials can be found or a value is malformed.
    public static func configuration(bucket: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> S3Configuration {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let region = value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? "us-east-1"
        guard region.utf8.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") }) else {
            throw StorageError(.invalidLocation, object: "AWS_REGION", message: "region is not a region name (lower-case letters, digits and '-')",
                               hint: "write e.g. AWS_REGION=us-east-1 or --s3-region eu-west-1")
        }
        var endpoint: URL?
        if let text = value("AWS_ENDPOINT_URL_S3") ?? value("AWS_ENDPOINT_URL") {
            guard let url = URL(string: text), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
                throw StorageError(.invalidLocation, object: text, message: "S3 endpoint is not an http(s) URL",
                                   hint: "write --s3-endpoint http://host:port (an IPv6 address in brackets: http://[::1]:9000)")
            }
            // A path is kept (a gateway serving S3 under one); a query, fragment or user would be dropped or sent unsigned.
            guard url.query == nil, url.fragment == nil, url.user == nil, url.password == nil else {
                throw StorageError(.invalidLocation, object: "the S3 endpoint", message: "it has a query, fragment or user name, which S3 requests cannot carry",
                                   hint: "write --s3-endpoint scheme://host[:port][/path] (credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
            }
            endpoint = url
        }
        var partSize = 16 * 1024 * 1024
        if let text = value("DBRECOVERY_S3_PART_SIZE_MB") {
            guard let megabytes = Int(text), megabytes >= 5, megabytes <= 5 * 1024 else {
                throw StorageError(.invalidLocation, object: "DBRECOVERY_S3_PART_SIZE_MB", message: "part size \(text) MiB is outside 5...5120",
                                   hint: "S3 needs parts of at least 5 MiB")
            }
            partSize = megabytes * 1024 * 1024
        }
        var concurrency = 4
        if let text = value("DBRECOVERY_S3_CONCURRENCY") {
            guard let number = Int(text), (1...64).contains(number) else {
                throw StorageError(.invalidLocation, object: "DBRECOVERY_S3_CONCURRENCY", message: "concurrency \(text) is outside 1...64")
            }
            concurrency = number
        }
        let attempts = try number("DBRECOVERY_S3_MAX_ATTEMPTS", in: environment, default: 8, range: 1...50, whole: true, unit: "attempts",
                                  example: "DBRECOVERY_S3_MAX_ATTEMPTS=8")
        let timeout = try number("DBRECOVERY_S3_TIMEOUT_SECONDS", in: environment, default: 60, range: 1...3600, unit: "seconds",
                                 example: "DBRECOVERY_S3_TIMEOUT_SECONDS=60")
        let lowSpeed = try number("DBRECOVERY_S3_LOW_SPEED_LIMIT", in: environment, default: Double(S3Configuration.defaultLowSpeedLimit),
                                  range: 0...1_073_741_824, whole: true, unit: "bytes per second", example: "DBRECOVERY_S3_LOW_SPEED_LIMIT=1024 (0 turns the floor off)")
        var caBundle: String?
        if let path = value("AWS_CA_BUNDLE") {
            // Checked here rather than at the first request: a wrong path is a setting to fix, not an S3 failure to retry.
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw StorageError(.invalidLocation, object: "AWS_CA_BUNDLE", message: "CA bundle \(path) is not a readable file",
                                   hint: "set AWS_CA_BUNDLE to the PEM file of the CA that signed the endpoint's certificate")
            }
            caBundle = path
        }
        let sse = value("DBRECOVERY_S3_SSE")
        if let sse, !["AES256", "aws:kms"].contains(sse) {
            throw StorageError(.invalidLocation, object: "DBRECOVERY_S3_SSE", message: "server-side encryption '\(sse)' is not AES256 or aws:kms")
        }
        // Last: the chain may ask a metadata service, and a malformed setting above is said without waiting for it.
        let credentials = try credentialSource(bucket: bucket, region: region, value: value)
        return S3Configuration(bucket: bucket, region: region,
                               endpoint: endpoint, pathStyle: value("DBRECOVERY_S3_ADDRESSING").map { $0 != "virtual" },
                               credentials: credentials, partSize: partSize, concurrency: concurrency, serverSideEncryption: sse,
                               kmsKeyID: value("DBRECOVERY_S3_KMS_KEY_ID"), maxAttempts: Int(attempts), requestTimeout: timeout,
                               lowSpeedLimit: Int(lowSpeed), caBundle: caBundle)
    }

    /// The credentials, in the AWS SDKs' order: the environment's keys; a web identity role
    /// (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, STS at `AWS_ENDPOINT_URL_STS`); a profile of the
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_PROFILE`); the container endpoint
    /// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`);
    /// EC2's instance profile (`AWS_EC2_METADATA_SERVICE_ENDPOINT`; `AWS_EC2_METADATA_DISABLED=true` skips it).
    /// Half a setting (a key without its secret, a named profile the file lacks) is refused rather than
    /// passed over for the next source: a run under another identity than the one meant is worse than none.
    static func credentialSource(bucket: String, region: String, value: (String) -> String?) throws -> AWSCredentialSource {
        let key = value("AWS_ACCESS_KEY_ID"), secret = value("AWS_SECRET_ACCESS_KEY")
        if let key, let secret {
            return AWSCredentialSource(fixed: AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN")),
                                       from: "environment (AWS_ACCESS_KEY_ID)")
        }
        guard key == nil && secret == nil else {
            throw StorageError(.invalidLocation, object: key == nil ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID",
                               message: "\(key == nil ? "AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID" : "AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY")",
                               hint: "set both, or neither to use a profile or the machine's role")
        }
        // One source per process for temporary credentials: the repository opened again (a run opens it
        // several times; a tiered run two buckets) shares the fetched credentials and their renewal.
        let chain = chainVariables.map { value($0) ?? "" }.joined(separator: "\u{0}") + "\u{0}\(region)"
        if let known = sources.withLock({ $0[chain] }) { return known }
        let source = try temporarySource(bucket: bucket, region: region, value: value)
        if source.refreshes { sources.withLock { $0[chain] = source } }
        return source
    }

    /// The environment variables the credential chain reads.
    static let chainVariables = ["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL",
                                 "AWS_SHARED_CREDENTIALS_FILE", "HOME", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                                 "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT"]

    /// The temporary-credential sources found so far in this process, by the chain's settings. A cache of
    /// what the metadata services answered, like the transport's open connections, not a setting.
    private static let sources = Mutex<[String: AWSCredentialSource]>([:])

    private static func temporarySource(bucket: String, region: String, value: (String) -> String?) throws -> AWSCredentialSource {
        if let tokenFile = value("AWS_WEB_IDENTITY_TOKEN_FILE"), let role = value("AWS_ROLE_ARN") {
            let text = value("AWS_ENDPOINT_URL_STS") ?? value("AWS_ENDPOINT_URL") ?? "https://sts.\(region).amazonaws.com"
            guard let endpoint = URL(string: text), ["http", "https"].contains(endpoint.scheme ?? ""), endpoint.host != nil else {
                throw StorageError(.invalidLocation, object: "AWS_ENDPOINT_URL_STS", message: "STS endpoint is not an http(s) URL",
                                   hint: "write e.g. AWS_ENDPOINT_URL_STS=https://sts.\(region).amazonaws.com, or leave it unset")
            }
            return AWSCredentialSource(provider: .webIdentity(roleARN: role, tokenFile: tokenFile,
                                                              sessionName: value("AWS_ROLE_SESSION_NAME") ?? "dbrecovery-\(getpid())", endpoint: endpoint),
                                       description: "web identity role \(role)")
        }
        let file = value("AWS_SHARED_CREDENTIALS_FILE") ?? ((value("HOME") ?? NSHomeDirectory()) + "/.aws/credentials")
        let name = value("AWS_PROFILE") ?? "default"
        if let keys = profile(name, in: file) {
            return AWSCredentialSource(fixed: keys, from: "profile \(name) in \(file)")
        }
        if value("AWS_PROFILE") != nil {
            throw StorageError(.invalidLocation, object: "AWS_PROFILE", message: "profile \(name) has no aws_access_key_id and aws_secret_access_key in \(file)",
                               hint: "name a profile that file has (AWS_PROFILE), or unset AWS_PROFILE to use the machine's role")
        }
        if let container = try containerEndpoint(value: value) {
            return AWSCredentialSource(provider: .container(container, tokenFile: value("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
                                                            token: value("AWS_CONTAINER_AUTHORIZATION_TOKEN")),
                                       description: "container credentials")
        }
        var looked = "the environment (AWS_ACCESS_KEY_ID), a web identity (AWS_WEB_IDENTITY_TOKEN_FILE), profile \(name) in \(file), a container endpoint"
        if value("AWS_EC2_METADATA_DISABLED")?.lowercased() != "true" {
            let text = value("AWS_EC2_METADATA_SERVICE_ENDPOINT") ?? "http://169.254.169.254"
            guard let endpoint = URL(string: text), ["http", "https"].contains(endpoint.scheme ?? ""), endpoint.host != nil else {
                throw StorageError(.invalidLocation, object: "AWS_EC2_METADATA_SERVICE_ENDPOINT", message: "instance metadata endpoint is not an http(s) URL",
                                   hint: "leave it unset (http://169.254.169.254), or write e.g. http://[fd00:ec2::254]")
            }
            let source = AWSCredentialSource(provider: .instanceMetadata(endpoint), description: "EC2 instance profile")
            // Asked now: on a machine outside EC2 this is where "no credentials" is found out. An instance
            // metadata service that answers badly is retried, and its failure is the repository's trouble.
            do {
                try source.probe()
                return source
            } catch let absent as AWSCredentialSource.Unreachable {
                looked += ", the EC2 instance profile (\(absent.message))"
            }
        }
        throw StorageError(.invalidLocation, object: "s3://\(bucket)", message: "no AWS credentials found; looked in \(looked)",
                           hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE), or run with an IAM role")
    }

    /// The container credentials endpoint, if one is set. A full URI must be https or an address on this
    /// machine written as such (the SDKs' rule: the token and credentials must not travel in clear to
    /// another host; a name is not checked, since `127.evil.example` is one).
    private static func containerEndpoint(value: (String) -> String?) throws -> URL? {
        if let relative = value("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            return URL(string: "http://169.254.170.2" + (relative.hasPrefix("/") ? relative : "/" + relative))
        }
        guard let text = value("AWS_CONTAINER_CREDENTIALS_FULL_URI") else { return nil }
        guard let url = URL(string: text), let host = url.host, url.scheme == "https" || (url.scheme == "http" && isLocal(host)) else {
            throw StorageError(.invalidLocation, object: "AWS_CONTAINER_CREDENTIALS_FULL_URI", message: "container credentials URI is not https or a local address",
                               hint: "use https, or http to 127.0.0.1 (any 127.x.y.z), [::1], localhost, 169.254.170.2, 169.254.170.23 or [fd00:ec2::23]")
        }
        return url
    }

    /// A loopback address written as one (IPv4 127.0.0.0/8 in dotted digits, ::1, localhost) or the ECS and
    /// EKS agents' link-local addresses.
    static func isLocal(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if ["localhost", "::1", "169.254.170.2", "169.254.170.23", "fd00:ec2::23"].contains(bare.lowercased()) { return true }
        let octets = bare.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127"
            && octets.allSatisfy { !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) && (Int($0) ?? 256) <= 255 }
    }

    /// The request tunables of `configuration(bucket:environment:)` with their defaults, for `--print-config`:
    /// name, value in effect (as set, or the default) and where it came from.
    public static func tunables(environment: [String: String]) -> [(name: String, value: String, source: String)] {
        let defaults = [("DBRECOVERY_S3_TIMEOUT_SECONDS", "60"), ("DBRECOVERY_S3_MAX_ATTEMPTS", "8"),
                        ("DBRECOVERY_S3_LOW_SPEED_LIMIT", String(S3Configuration.defaultLowSpeedLimit)), ("DBRECOVERY_S3_PART_SIZE_MB", "16"),
                        ("DBRECOVERY_S3_CONCURRENCY", "4"), ("AWS_CA_BUNDLE", "the system's CAs")]
        return defaults.map { name, fallback in
            if let text = environment[name], !text.isEmpty { return (name, text, "environment \(name)") }
            return (name, fallback, "default")
        }
    }

    /// A number setting: absent or empty gives `fallback`; anything that is not a plain number in `range` is
    /// refused (a unit such as `30s` or a word such as `three` is not read as the default behind the user's back).
    private static func number(_ name: String, in environment: [String: String], default fallback: Double, range: ClosedRange<Double>,
                               whole: Bool = false, unit: String, example: String) throws -> Double {
        guard let text = environment[name], !text.isEmpty else { return fallback }
        let bounds = "\(Int(range.lowerBound))...\(Int(range.upperBound))"
        guard let number = Double(text), number.isFinite, range.contains(number), !whole || number == number.rounded() else {
            throw StorageError(.invalidLocation, object: name, message: "\(name)=\(text) is not \(whole ? "a whole" : "a") number of \(unit) in \(bounds)",
                               hint: "write a plain number, e.g. \(example)")
        }
        return number
    }

    /// Reads one profile of an AWS credentials file (INI).
    static func profile(_ name: String, in path: String) -> AWSCredentials? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        var section = ""
        var values: [String: String] = [:]
        // Any line ending: a file written on Windows ends its lines with CR LF, one Character in Swift.
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("#") || line.hasPrefix(";") || line.isEmpty { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard section == name, let equals = line.firstIndex(of: "=") else { continue }
            values[line[..<equals].trimmingCharacters(in: .whitespaces)] = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
        }
        guard let key = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else { return nil }
        return AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: values["aws_session_token"])
    }
}
