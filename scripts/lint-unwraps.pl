#!/usr/bin/env perl
# Fails (exit 1) when Sources hold a force-unwrap (`x!`), `try!` or `as!`: each is a crash (exit 132
# with no message) waiting for an input nobody tried. Tests are exempt. Comments and the contents of
# string literals are ignored; `!=` and prefix `!` (negation) are not unwraps.
use strict;
use warnings;
use File::Find;

my @found;
find({ no_chdir => 1, wanted => sub {
    return unless /\.swift$/ && -f $_;
    my $path = $File::Find::name;
    open(my $file, '<', $path) or die "lint: cannot read $path: $!\n";
    my $inBlock = 0;
    while (my $line = <$file>) {
        my $code = $line;
        if ($code =~ /"""/) { $inBlock = !$inBlock; next; }   # multi-line string literal fences
        next if $inBlock;
        $code =~ s/"(?:[^"\\]|\\.)*"/""/g;                   # string literal contents
        $code =~ s{//.*$}{};                                  # line comments
        if ($code =~ /\btry!|\bas!|[\]\w)>]!(?!=)/) {
            chomp(my $shown = $line);
            $shown =~ s/^\s+//;
            push @found, "$path:$.: $shown";
        }
    }
    close($file);
}}, @ARGV ? @ARGV : ('Sources'));

if (@found) {
    print STDERR "lint: force-unwrap, try! or as! in Sources (use guard let / if let / a thrown error with a HINT):\n";
    print STDERR "  $_\n" for @found;
    exit 1;
}
