"""The Lambda side: the package a function runs (`package`) and the spec it carries
(`packaged`)."""
