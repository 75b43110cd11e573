-- Statements psql must keep whole or cut; RestoreFidelityTests sends this script through psql
-- with log_statement = all and compares what the server received with SQLStatements.split.
SELECT 1; SELECT 2;SELECT
  3
;
CREATE TABLE split_a (x integer);
CREATE TABLE split_b (x integer);
CREATE RULE split_r AS ON INSERT TO split_a DO ALSO (INSERT INTO split_b VALUES (new.x); INSERT INTO split_b VALUES (new.x + 1));
CREATE FUNCTION split_f(a integer) RETURNS integer LANGUAGE sql BEGIN ATOMIC SELECT a + 1; END;
CREATE OR REPLACE FUNCTION split_g(a integer) RETURNS text LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN a > 0 THEN 'x;y' ELSE 'z' END;
  SELECT 'second; statement';
END;
CREATE PROCEDURE split_p() LANGUAGE sql BEGIN ATOMIC INSERT INTO split_a VALUES (1); INSERT INTO split_a VALUES (2); END;
CREATE FUNCTION split_h() RETURNS integer RETURN CASE WHEN true THEN 1 END;
BEGIN; SELECT 'in a transaction;'; END;
SELECT $fn$ a; $$ ; $$ $x$;$x$ $fn$, $_$;$_$, $tag$ x $junk$tag$;
SELECT 'it''s; fine', E'it\'s; x', e'\\', U&'d\0061t', U&"a;""b" FROM (SELECT 1 AS "a;""b") s;
SELECT B'1010', X'1F', N'n;';
SELECT 1 -- ; a comment
, 2 /* a /* nested; */ comment; */ , 3;
SELECT 'a'
'b;c';
SELECT $$line one;

line three$$;
SELECT 'crlf
	tab', "split_a".x FROM split_a;
SELECT 1e3, 1.5, .5e-2, 3 -- trailing; comment
;
SELECT 'ünïcödé; 😀', 'Zoë';
SET standard_conforming_strings = off;
SELECT 'a\'; b';
SET standard_conforming_strings = on;
SELECT 'c\';
SELECT 'a' -- a comment between the parts of one string
'b' AS continued;
/* a block comment
   over lines; */ SELECT 5;
SELECT

6;
SELECT
   
7; SELECT $q$ $q$; SELECT E'\\'' x'''; SELECT 8 /* ; */;
CREATE FUNCTION split_i(a integer, "begin" integer) RETURNS integer LANGUAGE sql BEGIN ATOMIC SELECT a + "begin"; END; SELECT 9;
CREATE TABLE "split;--""/*" ("$$" integer, "x'" integer);
SELECT $é$ a; $é$, $a_1$ b; $a_1$;
SELECT E'ends with a backslash \
continues; here';
SELECT a$b FROM (SELECT 1 AS a$b) s;
CREATE FUNCTION split_j(a integer) RETURNS integer LANGUAGE sql BEGIN ATOMIC SELECT (CASE WHEN a > 0 THEN (SELECT 1) END); SELECT CASE WHEN true THEN 2 END; END;
SET standard_conforming_strings = off;
SELECT 'x\\'';'' y', E'z\';';
SET standard_conforming_strings = on;
SELECT 10;
SELECT
11;
SELECT U&'d!0061t;' UESCAPE '!', U&"d!0061;" UESCAPE '!' FROM (SELECT 1 AS "da;") s;
CREATE TABLE split_c (x integer);
CREATE RULE split_r2 AS ON INSERT TO split_c DO INSTEAD (INSERT INTO split_b VALUES (new.x -- ;
); INSERT INTO split_b VALUES (new.x * 2 /* ; */));
CREATE FUNCTION split_k(a integer) RETURNS text LANGUAGE plpgsql AS $fn$
BEGIN
  RETURN $$ a; $$ || $x$ $$ ; $x$ || a;
END;
$fn$;
CREATE FUNCTION split_l(a integer) RETURNS integer LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN a > 0 THEN CASE WHEN a > 10 THEN 2 ELSE 1 END ELSE 0 END;
  SELECT (a -- ; end
  );
END;
CREATE OR REPLACE PROCEDURE split_q(a integer) LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO split_c VALUES (a); INSERT INTO split_c VALUES (a + 1);
END;
CREATE TABLE "s;--x/*y" ("$x$" text DEFAULT '$$;', "e" text DEFAULT E'\\'''); SELECT 12;
CREATE TABLE split_copy (a text, b text);
COPY split_copy (a, b) FROM stdin; SELECT 'after the copy, on its line';
x; SELECT 1;	y
'open quote	$$ /* open
\\.	not the end; a backslash and a dot
\.
SELECT 'after the rows', count(*) FROM split_copy;
SELECT 4
