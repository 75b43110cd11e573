import Foundation

/// S3 settings from the environment, the way the AWS CLI reads them: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, else the `~/.aws/credentials` profile
/// (`AWS_PROFILE`, default `default`); `AWS_REGION` / `AWS_DEFAULT_REGION`;
/// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`. Ours: `DBRECOVERY_S3_PART_SIZE_MB`, `DBRECOVERY_S3_CONCURRENCY`
/// (parts in flight, default 4; memory is about (concurrency + 1) × part size), `DBRECOVERY_S3_MAX_ATTEMPTS`
/// (default 8), `DBRECOVERY_S3_TIMEOUT_SECONDS` (per request, default 60),
/// `DBRECOVERY_S3_SSE` (`AES256` or `aws:kms`), `DBRECOVERY_S3_KMS_KEY_ID`.
public enum S3Settings {
    /// Builds the configuration of one bucket.
    ///
    /// - Throws: `StorageError(.invalidLocation)` when no credentials can be found or a value is malformed.
    public static func configuration(bucket: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> S3Configuration {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        var credentials: AWSCredentials?
        if let key = value("AWS_ACCESS_KEY_ID"), let secret = value("AWS_SECRET_ACCESS_KEY") {
            credentials = AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN"))
        } else {
            let file = value("AWS_SHARED_CREDENTIALS_FILE") ?? ((value("HOME") ?? NSHomeDirectory()) + "/.aws/credentials")
            credentials = profile(value("AWS_PROFILE") ?? "default", in: file)
        }
        guard let credentials else {
            throw StorageError(.invalidLocation, object: "s3://\(bucket)", message: "no AWS credentials found",
                               hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE)")
        }
        var endpoint: URL?
        if let text = value("AWS_ENDPOINT_URL_S3") ?? value("AWS_ENDPOINT_URL") {
            guard let url = URL(string: text), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
                throw StorageError(.invalidLocation, object: text, message: "S3 endpoint is not an http(s) URL",
                                   hint: "write --s3-endpoint http://host:port")
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
        let attempts = Int(value("DBRECOVERY_S3_MAX_ATTEMPTS") ?? "") ?? 8
        let timeout = Double(value("DBRECOVERY_S3_TIMEOUT_SECONDS") ?? "") ?? 60
        guard (1...50).contains(attempts), timeout > 0, timeout <= 3600 else {
            throw StorageError(.invalidLocation, object: "DBRECOVERY_S3_MAX_ATTEMPTS / DBRECOVERY_S3_TIMEOUT_SECONDS",
                               message: "attempts must be 1...50 and the timeout 0...3600 seconds")
        }
        let sse = value("DBRECOVERY_S3_SSE")
        if let sse, !["AES256", "aws:kms"].contains(sse) {
            throw StorageError(.invalidLocation, object: "DBRECOVERY_S3_SSE", message: "server-side encryption '\(sse)' is not AES256 or aws:kms")
        }
        let region = value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? "us-east-1"
        guard region.utf8.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") }) else {
            throw StorageError(.invalidLocation, object: "AWS_REGION", message: "region is not a region name (lower-case letters, digits and '-')",
                               hint: "write e.g. AWS_REGION=us-east-1 or --s3-region eu-west-1")
        }
        return S3Configuration(bucket: bucket, region: region,
                               endpoint: endpoint, pathStyle: value("DBRECOVERY_S3_ADDRESSING").map { $0 != "virtual" },
                               credentials: credentials, partSize: partSize, concurrency: concurrency, serverSideEncryption: sse,
                               kmsKeyID: value("DBRECOVERY_S3_KMS_KEY_ID"), maxAttempts: attempts, requestTimeout: timeout)
    }

    /// Reads one profile of an AWS credentials file (INI).
    static func profile(_ name: String, in path: String) -> AWSCredentials? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        var section = ""
        var values: [String: String] = [:]
        for raw in text.split(separator: "\n") {
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
